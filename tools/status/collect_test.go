package status

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/services/partitioner"
	"github.com/surge-events/surge/services/sink"
	"github.com/surge-events/surge/tools/stack"
)

// TestCollect builds a known state in a real JetStream server, with real
// lease and admin servers, and checks that a look reads every part of it
// exactly: the least pending of EVENTS' consumers and its oldest waiting
// message, the sink's durable consumer with its ack floor, lease owners
// (sink) beside static owners read from a batcher's metrics, the sink's
// watermark from its metrics, dead letters by subject and shard, a
// stream's fill, and a sink's watchdog naming a stalled shard.
func TestCollect(t *testing.T) {
	ctx := t.Context()
	sc := streams.DefaultConfig()
	sc.MaxBytes, sc.MaxMsgSize = 1<<20, 64<<10
	ns, js := startJetStream(t, sc)

	publish := func(subject string, n, size int) []uint64 {
		t.Helper()
		var seqs []uint64
		for range n {
			ack, err := js.Publish(ctx, subject, bytes.Repeat([]byte("x"), size))
			require.NoError(t, err)
			seqs = append(seqs, ack.Sequence)
		}
		return seqs
	}
	events, err := js.Stream(ctx, streams.Events)
	require.NoError(t, err)
	batches, err := js.Stream(ctx, streams.Batches)
	require.NoError(t, err)
	stamp := func(s jetstream.Stream, seq uint64) time.Time {
		t.Helper()
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		return m.Time.UTC()
	}

	// EVENTS: shard 0 has 3 messages; its batcher consumer took one, a
	// consumer left by an earlier batcher none. Shard 1 is read up.
	e0 := publish("events.shard.0", 3, 10)
	e1 := publish("events.shard.1", 1, 10)
	batcherConsumer := func(k int, take int) {
		t.Helper()
		c, err := events.CreateConsumer(ctx, jetstream.ConsumerConfig{
			FilterSubject: streams.EventsSubject(k), AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: time.Minute,
		})
		require.NoError(t, err)
		if take > 0 {
			batch, err := c.FetchNoWait(take)
			require.NoError(t, err)
			n := 0
			for range batch.Messages() {
				n++
			}
			require.Equal(t, take, n)
		}
	}
	batcherConsumer(0, 0)
	batcherConsumer(0, 1)
	batcherConsumer(1, len(e1))

	// BATCHES: shard 0 holds 14 batches of 60 KiB (over 80% of the 1 MiB
	// limit), nothing taken; shard 1 two, the first landed and acked.
	publish("batches.shard.0", 14, 60<<10)
	b1 := publish("batches.shard.1", 2, 10)
	scfg := sink.DefaultConfig()
	for k := range 2 {
		c, err := batches.CreateOrUpdateConsumer(ctx, scfg.ConsumerConfig(k))
		require.NoError(t, err)
		if k == 1 {
			batch, err := c.FetchNoWait(1)
			require.NoError(t, err)
			for m := range batch.Messages() {
				require.NoError(t, m.DoubleAck(ctx))
			}
		}
	}

	// Dead letters of shard 1's sink and of a producer's invalid event.
	publish(streams.DeadLetterSubject("sink", 1), 2, 10)
	publish(streams.InvalidSubject("demo"), 1, 10)

	// The sink shares its shards by leases: one instance holds both.
	owner, err := lease.NewOwner(js, lease.Config{Service: "sink", Instance: "sink-test-1", Shards: 2, TTL: 2 * time.Second}, zap.NewNop())
	require.NoError(t, err)
	runCtx, stopLeases := context.WithCancel(context.Background())
	leasesDone := make(chan error, 1)
	go func() {
		leasesDone <- owner.Run(runCtx, func(ctx context.Context, _ int) error { <-ctx.Done(); return nil })
	}()
	t.Cleanup(func() {
		stopLeases()
		assert.NoError(t, <-leasesDone)
	})
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, []int{0, 1}, owner.Owned())
	}, 10*time.Second, 20*time.Millisecond)

	// A batcher that runs shard 0 only (static); a sink whose watchdog
	// says shard 1 is stalled and whose watermark of shard 1 is 42.
	batcherAdmin := admin(t, func(reg *prometheus.Registry, _ *service.Admin) {
		promauto.With(reg).NewCounterVec(prometheus.CounterOpts{Name: "surge_batcher_stalls_total"}, []string{"shard"}).WithLabelValues("0")
	})
	sinkAdmin := admin(t, func(reg *prometheus.Registry, a *service.Admin) {
		promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{Name: "surge_sink_watermark"}, []string{"shard"}).WithLabelValues("1").Set(42)
		lease.ExportInstance(reg, "sink", "sink-test-1")
		a.NotReady("stalled shard 1", "1 pending, no progress for 30s, waiting on insert into clickhouse 10.0.0.1:9440")
	})

	c, err := New(Config{NATSURL: ns.ClientURL(), Admin: []Endpoint{
		{Name: "batcher-a", Service: "batcher", Addr: batcherAdmin},
		{Name: "sink-a", Service: "sink", Addr: sinkAdmin},
		{Name: "ingest", Service: "ingest", Addr: "127.0.0.1:1"},
	}})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	r, err := c.Collect(ctx)
	require.NoError(t, err)
	r.Judge(Thresholds{MaxLag: time.Hour, Stall: time.Hour, StreamFull: 0.8})

	assert.Equal(t, map[string]string{"batcher": "static", "sink": "lease"}, r.Ownership)
	require.Len(t, r.Shards, 2)
	s0, s1 := r.Shards[0], r.Shards[1]
	assert.Equal(t, "batcher-a", s0.BatcherOwner)
	assert.Empty(t, s1.BatcherOwner, "no batcher runs shard 1")
	assert.Equal(t, "sink-a", s0.SinkOwner, "the lease holder's id, mapped to its admin name")
	assert.Equal(t, "sink-a", s1.SinkOwner)

	assert.Equal(t, uint64(2), s0.Events.Pending, "the least pending of the two consumers")
	if assert.NotNil(t, s0.Events.Oldest) {
		assert.Equal(t, stamp(events, e0[1]), *s0.Events.Oldest, "the first message not yet delivered")
	}
	assert.NotNil(t, s0.Events.LastProgress)
	assert.Equal(t, uint64(0), s1.Events.Pending)
	assert.Nil(t, s1.Events.Oldest)

	assert.Equal(t, sink.ConsumerName(0), s0.Batches.Consumer)
	assert.Equal(t, uint64(14), s0.Batches.Pending)
	assert.Nil(t, s0.LastInsert, "nothing acked on shard 0")
	assert.Equal(t, uint64(1), s1.Batches.Pending)
	if assert.NotNil(t, s1.Batches.Oldest) {
		assert.Equal(t, stamp(batches, b1[1]), *s1.Batches.Oldest, "the first message after the ack floor")
	}
	assert.NotNil(t, s1.LastInsert)

	assert.Nil(t, s0.Watermark)
	if assert.NotNil(t, s1.Watermark) {
		assert.Equal(t, uint64(42), *s1.Watermark)
	}
	assert.Nil(t, s1.Rows, "no ClickHouse asked")
	assert.Equal(t, uint64(0), s0.DeadLetters)
	assert.Equal(t, uint64(2), s1.DeadLetters)
	assert.Equal(t, map[string]uint64{"deadletter.sink.shard.1": 2, "deadletter.partitioner.invalid.demo": 1}, r.DeadLetters)

	require.Len(t, r.Streams, 4)
	assert.Equal(t, []string{"INGEST", "EVENTS", "BATCHES", "DEAD_LETTER"}, []string{r.Streams[0].Name, r.Streams[1].Name, r.Streams[2].Name, r.Streams[3].Name})
	assert.Equal(t, uint64(15), r.Streams[2].Messages, "a work queue: the acked batch is gone")
	assert.Equal(t, int64(1<<20), r.Streams[2].MaxBytes)
	assert.Equal(t, 1, r.Streams[2].Current)

	require.Len(t, r.Instances, 3)
	assert.True(t, r.Instances[0].Ready)
	assert.False(t, r.Instances[1].Ready)
	assert.Equal(t, []string{"stalled shard 1: 1 pending, no progress for 30s, waiting on insert into clickhouse 10.0.0.1:9440"}, r.Instances[1].Reasons)
	assert.False(t, r.Instances[2].Ready)

	var got []string
	for _, p := range r.Problems {
		got = append(got, p.Subject+" "+p.Kind)
	}
	assert.Equal(t, []string{
		"shard 1 unowned",
		"shard 1 stalled",
		"stream BATCHES stream full",
		"stream DEAD_LETTER dead letters",
		"sink-a not ready",
		"ingest not ready",
	}, got)
	assert.False(t, r.Healthy)

	// No batcher with typed columns ran: no table, and the look did not
	// create the schema bucket.
	assert.Equal(t, []TableSchema{}, r.Schemas)
	assert.Equal(t, []Problem{}, r.Warnings)
	_, err = js.KeyValue(ctx, schema.Bucket)
	assert.ErrorIs(t, err, jetstream.ErrBucketNotFound)
}

// startJetStream runs an embedded JetStream server for the test, with
// Surge's streams as sc shapes them, and connects to it.
func startJetStream(t *testing.T, sc streams.Config) (*server.Server, jetstream.JetStream) {
	t.Helper()
	ns, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, streams.Ensure(t.Context(), js, sc))
	return ns, js
}

// admin serves a real admin endpoint (/readyz, /metrics) set up by prepare.
func admin(t *testing.T, prepare func(*prometheus.Registry, *service.Admin)) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := service.NewAdmin("127.0.0.1:0", reg, zap.NewNop())
	require.NoError(t, err)
	a.Ready(service.CheckStarting)
	prepare(reg, a)
	stop := a.Start()
	t.Cleanup(func() { assert.NoError(t, stop()) })
	return a.Addr()
}

func TestOwner(t *testing.T) {
	modes := map[string]string{"sink": "lease", "batcher": "static"}
	leases := map[string]string{"sink.shard.0": "vm-1", "sink.shard.1": "vm-2"}
	metrics := map[string]*instanceMetrics{
		"sink-1":    {service: "sink", leaseID: "vm-1"},
		"batcher-1": {service: "batcher", shards: map[int]bool{0: true}},
		"batcher-2": {service: "batcher", shards: map[int]bool{0: true, 1: true}},
	}
	for _, tc := range []struct {
		svc  string
		k    int
		want string
	}{
		{"sink", 0, "sink-1"},                 // a holder whose admin is known: its name
		{"sink", 1, "vm-2"},                   // one whose admin is not: its lease id
		{"sink", 2, ""},                       // nobody holds it
		{"batcher", 0, "batcher-1,batcher-2"}, // static: every instance that runs it
		{"batcher", 1, "batcher-2"},
		{"batcher", 2, ""},
	} {
		assert.Equal(t, tc.want, owner(modes, leases, metrics, tc.svc, tc.k), "%s shard %d", tc.svc, tc.k)
	}
	assert.Equal(t, "static", owner(modes, leases, map[string]*instanceMetrics{}, "batcher", 0), "no admin asked")
}

// TestCollectIngestAckedLeftBehind: a NATS server killed between a
// work-queue ack and the removal comes back with INGEST holding messages
// the partitioner's consumer of their tenant has acked (ack floor past
// them, nothing pending). Resetting the consumer past them makes that
// state. They are no backlog: the look reports none and no stalled
// partitioner, and the stack's backlog (the progress line's) counts none
// either. A tenant no consumer reads yet has all its messages waiting.
func TestCollectIngestAckedLeftBehind(t *testing.T) {
	ctx := t.Context()
	ns, js := startJetStream(t, streams.DefaultConfig())

	const acked = 82
	for range acked {
		_, err := js.Publish(ctx, streams.IngestSubject("demo"), []byte("x"))
		require.NoError(t, err)
	}
	ingest, err := js.Stream(ctx, streams.Ingest)
	require.NoError(t, err)
	demo := partitioner.ConsumerName("demo")
	cons, err := ingest.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: demo, FilterSubjects: partitioner.FilterSubjects("demo"), AckPolicy: jetstream.AckExplicitPolicy})
	require.NoError(t, err)
	_, err = ingest.ResetConsumerToSequence(ctx, demo, acked+1)
	require.NoError(t, err)

	ci, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(acked), ci.AckFloor.Stream)
	require.Zero(t, ci.NumPending)
	require.Zero(t, ci.NumAckPending)

	// Shard 0's batcher and sink read their streams, which are empty.
	events, err := js.Stream(ctx, streams.Events)
	require.NoError(t, err)
	_, err = events.CreateConsumer(ctx, jetstream.ConsumerConfig{FilterSubject: streams.EventsSubject(0), AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: time.Minute})
	require.NoError(t, err)
	batches, err := js.Stream(ctx, streams.Batches)
	require.NoError(t, err)
	_, err = batches.CreateOrUpdateConsumer(ctx, sink.DefaultConfig().ConsumerConfig(0))
	require.NoError(t, err)

	c, err := New(Config{NATSURL: ns.ClientURL(), Shards: 1})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	look := func() *Report {
		t.Helper()
		r, err := c.Collect(ctx)
		require.NoError(t, err)
		// Any wait is a stall at once: a false backlog could not hide.
		r.Judge(Thresholds{MaxLag: time.Hour, Stall: 0, StreamFull: 0.8})
		return r
	}
	backlog := func() stack.Backlog {
		t.Helper()
		info, err := ns.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
		require.NoError(t, err)
		return stack.BacklogOf(info)
	}

	r := look()
	assert.Equal(t, uint64(acked), r.Streams[0].Messages, "the acked messages are still stored")
	assert.Equal(t, demo, r.Ingest.Consumer)
	assert.Zero(t, r.Ingest.Pending)
	assert.Nil(t, r.Ingest.Oldest)
	assert.Equal(t, []Problem{}, r.Problems)
	assert.True(t, r.Healthy)
	assert.True(t, backlog().Empty())

	// A request after them waits, and is the oldest waiting.
	ack, err := js.Publish(ctx, streams.IngestSubject("demo"), []byte("y"))
	require.NoError(t, err)
	m, err := ingest.GetMsg(ctx, ack.Sequence)
	require.NoError(t, err)
	// The consumer counts a new message pending a moment after the stream
	// stores it (its own signal loop): read until it does, within a bound.
	require.EventuallyWithT(t, func(co *assert.CollectT) {
		info, err := cons.Info(ctx)
		if assert.NoError(co, err) {
			assert.Equal(co, uint64(1), info.NumPending)
		}
	}, 10*time.Second, 5*time.Millisecond)
	r = look()
	assert.Equal(t, uint64(1), r.Ingest.Pending)
	if assert.NotNil(t, r.Ingest.Oldest) {
		assert.Equal(t, m.Time.UTC(), *r.Ingest.Oldest)
	}
	require.Len(t, r.Problems, 1)
	assert.Equal(t, "partitioner", r.Problems[0].Subject)
	assert.Equal(t, KindStalled, r.Problems[0].Kind)
	assert.Equal(t, stack.Backlog{Ingest: 1}, backlog())

	// Another tenant's requests, before a partitioner made its consumer:
	// they wait too.
	for range 2 {
		_, err = js.Publish(ctx, "surge.in.other.app", []byte("z"))
		require.NoError(t, err)
	}
	r = look()
	assert.Equal(t, uint64(3), r.Ingest.Pending)
	if assert.NotNil(t, r.Ingest.Oldest) {
		assert.Equal(t, m.Time.UTC(), *r.Ingest.Oldest)
	}
}
