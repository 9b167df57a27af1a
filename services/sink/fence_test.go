package sink

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// countingStore counts the inserts that reach a real server, and runs
// after (when set) once an insert returned.
type countingStore struct {
	store
	inserts atomic.Int32
	// before runs ahead of each insert; an error from it is the insert's.
	before func(ctx context.Context) error
	after  func()
}

func (s *countingStore) Insert(ctx context.Context, b *batch.Batch) error {
	if s.before != nil {
		if err := s.before(ctx); err != nil {
			return err
		}
	}
	s.inserts.Add(1)
	err := s.store.Insert(ctx, b)
	if s.after != nil {
		s.after()
	}
	return err
}

// fenceEnv is one shard loop of a sink driven by hand against a real
// JetStream and a real clickhouse-server, with its lease in mine.
type fenceEnv struct {
	t    *testing.T
	js   jetstream.JetStream
	ch   clickhouse.Conn
	st   *countingStore
	l    *shardLoop
	mine atomic.Bool
}

func newFenceEnv(t *testing.T) *fenceEnv {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	sc := streams.DefaultConfig()
	sc.MaxBytes = 64 << 20
	require.NoError(t, streams.Ensure(ctx, js, sc))
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	cluster, err := chserver.StartCluster(ctx, t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(cluster.Stop)

	// The loop's consumer has an ack wait of an hour (newTestService): a
	// batch it did not release stays locked for the test's whole run.
	s := newTestService(t, prometheus.NewRegistry(), time.Hour)
	s.cfg.ClickHouse.Addrs = cluster.Addrs()
	srv, err := openServer(s.cfg.ClickHouse, cluster.Addrs()[0])
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	require.NoError(t, srv.EnsureSchema(ctx))
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: cluster.Addrs(), DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })

	e := &fenceEnv{t: t, js: js, ch: conn, st: &countingStore{store: srv}}
	e.l = s.newShardLoop(0, js, e.st)
	e.l.holds = e.mine.Load
	require.NoError(t, e.l.createConsumer(ctx))
	return e
}

// publish sends data to shard 0's BATCHES subject as the batcher does.
func (e *fenceEnv) publish(data []byte, id string) {
	msg := nats.NewMsg(streams.BatchesSubject(0))
	msg.Data = data
	msg.Header.Set(streams.HeaderBatchID, id)
	_, err := e.js.PublishMsg(e.t.Context(), msg, jetstream.WithMsgID(id))
	require.NoError(e.t, err)
}

// fetch takes the shard's next batch with the loop's consumer: a batch
// still locked by an earlier delivery is not handed out.
func (e *fenceEnv) fetch() jetstream.Msg {
	e.t.Helper()
	msgs, err := e.l.cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(e.t, err)
	var got []jetstream.Msg
	for msg := range msgs.Messages() {
		got = append(got, msg)
	}
	require.Len(e.t, got, 1, "a batch to fetch: %v", msgs.Error())
	return got[0]
}

func (e *fenceEnv) delivered(msg jetstream.Msg) uint64 {
	meta, err := msg.Metadata()
	require.NoError(e.t, err)
	return meta.NumDelivered
}

func (e *fenceEnv) rows() uint64 {
	var n uint64
	require.NoError(e.t, e.ch.QueryRow(e.t.Context(), "SELECT count() FROM surge.events_local").Scan(&n))
	return n
}

func (e *fenceEnv) deadLetters() uint64 {
	st, err := e.js.Stream(e.t.Context(), streams.DeadLetter)
	require.NoError(e.t, err)
	info, err := st.Info(e.t.Context())
	require.NoError(e.t, err)
	return info.State.Msgs
}

func (e *fenceEnv) consumerIdle() {
	e.t.Helper()
	info, err := e.l.cons.Info(e.t.Context())
	require.NoError(e.t, err)
	require.Zero(e.t, info.NumPending, "batches waiting")
	require.Zero(e.t, info.NumAckPending, "batches unacked")
}

// TestLostLeaseInsertsNothing drives one shard loop against real servers:
// without the lease a batch is neither inserted nor acked but released at
// once for the next owner; a lease lost during the insert leaves the batch
// unacked, and the next owner finds it landed; a lease lost during an
// insert cuts it; a dead letter is not published without the lease.
func TestLostLeaseInsertsNothing(t *testing.T) {
	e := newFenceEnv(t)
	b := testBatch(0, 1, 4)
	e.publish(batch.Encode(b), b.ID())

	// No lease: nothing reaches ClickHouse, the batch is released unacked.
	msg := e.fetch()
	e.l.handle(t.Context(), msg)
	require.Zero(t, e.st.inserts.Load(), "no insert sent")
	require.Zero(t, e.rows())
	require.Zero(t, testutil.ToFloat64(e.l.m.inserted))

	// The lease is lost while the insert runs: the rows land, the batch
	// is not acked.
	msg = e.fetch()
	require.Equal(t, uint64(2), e.delivered(msg), "released by a Nak, not by its hour-long ack wait")
	e.mine.Store(true)
	e.st.after = func() { e.mine.Store(false) }
	e.l.handle(t.Context(), msg)
	require.Equal(t, int32(1), e.st.inserts.Load())
	rows := uint64(rowsFrom(1, 4))
	require.Equal(t, rows, e.rows())

	// The next owner (the lease back) finds the batch landed and acks it.
	e.st.after = nil
	e.mine.Store(true)
	msg = e.fetch()
	require.Equal(t, uint64(3), e.delivered(msg), "not acked without the lease")
	e.l.known = false // a new owner reads the watermark from ClickHouse
	e.l.handle(t.Context(), msg)
	require.Equal(t, int32(1), e.st.inserts.Load(), "no second insert")
	require.Equal(t, rows, e.rows())
	require.Equal(t, 1.0, testutil.ToFloat64(e.l.m.duplicates))
	e.consumerIdle()

	// The lease is lost (the loop's context ends with it) while an insert
	// hangs: the insert is cut and the batch released at once.
	next := testBatch(0, 5, 6)
	e.publish(batch.Encode(next), next.ID())
	msg = e.fetch()
	ctx, lose := context.WithCancel(t.Context())
	started := make(chan struct{})
	e.st.before = func(ictx context.Context) error {
		close(started)
		select { // the insert of a frozen socket: only a cut ends it
		case <-ictx.Done():
			return ictx.Err()
		case <-time.After(40 * time.Second):
			return errors.New("the insert was not cut")
		}
	}
	go func() {
		select {
		case <-started:
			e.mine.Store(false)
		case <-t.Context().Done():
		}
		lose()
	}()
	// Only the cut can end the insert in time: its own timeout is long.
	e.l.insertTimeout = time.Hour
	handled := time.Now()
	e.l.handle(ctx, msg)
	require.Less(t, time.Since(handled), 30*time.Second, "the insert was cut")
	require.Equal(t, int32(1), e.st.inserts.Load(), "the hung insert never reached the server")
	require.Equal(t, rows, e.rows())
	e.st.before = nil
	e.mine.Store(true)
	msg = e.fetch()
	require.Equal(t, uint64(2), e.delivered(msg), "released by a Nak")
	e.l.handle(t.Context(), msg)
	require.Equal(t, rows+uint64(rowsFrom(5, 6)), e.rows())
	e.consumerIdle()

	// A corrupt batch without the lease: no dead letter, released.
	e.publish([]byte("definitely not a batch"), "corrupt")
	e.mine.Store(false)
	msg = e.fetch()
	e.l.handle(t.Context(), msg)
	require.Zero(t, e.deadLetters())
	e.mine.Store(true)
	msg = e.fetch()
	require.Equal(t, uint64(2), e.delivered(msg))
	e.l.handle(t.Context(), msg)
	require.Equal(t, uint64(1), e.deadLetters())
	require.Equal(t, 1.0, testutil.ToFloat64(e.l.m.deadLettered))
	e.consumerIdle()
}

// TestStopCutsTheBatchInHandAfterShutdownTimeout: a shard that stops while
// it still holds its lease (shutdown, hand-over) keeps working on the
// batch in hand, but no longer than shutdown_timeout: an insert that hangs
// past it is cut, and the batch goes back unacked to the next owner, which
// lands it once. A graceful stop never keeps a shard longer than a crash.
func TestStopCutsTheBatchInHandAfterShutdownTimeout(t *testing.T) {
	e := newFenceEnv(t)
	e.mine.Store(true)
	b := testBatch(0, 1, 4)
	e.publish(batch.Encode(b), b.ID())
	msg := e.fetch()

	e.l.insertTimeout = time.Hour // only the stop's bound can cut the insert
	e.l.shutdownTimeout = 500 * time.Millisecond
	ctx, stop := context.WithCancel(t.Context())
	cut := make(chan error, 1)
	e.st.before = func(ictx context.Context) error {
		stop() // the shard stops while its insert hangs on a frozen socket
		select {
		case <-ictx.Done():
			cut <- nil
			return ictx.Err()
		case <-time.After(time.Minute):
			cut <- errors.New("the insert was not cut")
			return errors.New("not cut")
		}
	}
	e.l.handle(ctx, msg)
	require.NoError(t, <-cut)
	require.Zero(t, e.st.inserts.Load(), "the hung insert never reached the server")
	require.Zero(t, e.rows())
	require.Zero(t, testutil.ToFloat64(e.l.m.inserted))

	// The next owner gets it at once (a Nak, not the hour-long ack wait)
	// and lands it.
	e.st.before = nil
	msg = e.fetch()
	require.Equal(t, uint64(2), e.delivered(msg), "released by a Nak")
	e.l.known = false
	e.l.handle(t.Context(), msg)
	require.Equal(t, uint64(rowsFrom(1, 4)), e.rows())
	e.consumerIdle()
}
