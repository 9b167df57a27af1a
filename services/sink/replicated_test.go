package sink_test

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
	"github.com/surge-events/surge/services/sink"
)

// newReplicatedEnv is an embedded JetStream server, a ZooKeeper and two
// ClickHouse shards of two replicas each. e.conns and e.ch.Servers are in
// the order shard 0 replica 0, shard 0 replica 1, shard 1 replica 0, ...
func newReplicatedEnv(t *testing.T) *testEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	ns := natstest.Start(t)
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, streams.Ensure(ctx, js, streamsConfig()))

	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	require.NoError(t, zookeeper.EnsureInstalled(ctx, t.Logf))
	zk, err := zookeeper.Start(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = zk.Stop() })
	ch, err := chserver.Start(ctx, t.TempDir(), chserver.Options{Shards: 2, Replicas: 2, ZooKeeper: zk.Addr()})
	require.NoError(t, err)
	t.Cleanup(ch.Stop) // before ZooKeeper stops: cleanups run last first

	e := &testEnv{t: t, ns: ns, js: js, ch: ch}
	for _, addr := range ch.Addrs() {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 2 * time.Second})
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		e.conns = append(e.conns, conn)
	}
	return e
}

// shardAddrs are the sink's addrs entries of the replicated cluster.
func shardAddrs(ch *chserver.Cluster) []string {
	var out []string
	for _, replicas := range ch.ReplicaAddrs() {
		out = append(out, strings.Join(replicas, sink.ReplicaSeparator))
	}
	return out
}

func (e *testEnv) replicatedConfig(shards int) sink.Config {
	cfg := e.config(shards)
	cfg.ClickHouse.Addrs = shardAddrs(e.ch)
	cfg.ClickHouse.Replicated = true
	return cfg
}

// server is the index in e.conns of replica r of ClickHouse shard s.
func server(s, r int) int { return 2*s + r }

// tryUint reads one UInt64 of server i, 0 when the table is not there yet.
func (e *testEnv) tryUint(i int, query string, args ...any) (uint64, error) {
	n, err := e.tryCount(i, query, args...)
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && (ex.Code == 60 || ex.Code == 81) {
		return 0, nil
	}
	return n, err
}

// requireExactlyOnce checks that every replica of every ClickHouse shard
// holds exactly the rows of its sink shards' first..last[k], and that the
// Distributed table, read from every server, holds each row once.
func (e *testEnv) requireExactlyOnce(last map[int]uint64) {
	e.t.Helper()
	total := 0
	for k, l := range last {
		total += rowsIn(1, l)
		s := k % 2
		for r := range 2 {
			i := server(s, r)
			require.EventuallyWithT(e.t, func(c *assert.CollectT) {
				n, err := e.tryUint(i, "SELECT count() FROM surge.events_local WHERE shard = ?", k)
				assert.NoError(c, err)
				assert.Equal(c, uint64(rowsIn(1, l)), n, "replica %d of clickhouse shard %d, sink shard %d", r, s, k)
			}, 30*time.Second, 20*time.Millisecond)
			require.Equal(e.t, expectedRows(k, 1, l), e.rowsOfShard(i, k), "rows of sink shard %d on %s", k, e.ch.Servers[i].Addr())
		}
	}
	for i := range e.conns {
		require.Equal(e.t, uint64(total), e.count(i, "SELECT count() FROM surge.events"), "distributed count from %s", e.ch.Servers[i].Addr())
		require.Equal(e.t, uint64(total), e.count(i, "SELECT uniqExact(event_id) FROM surge.events"), "distributed distinct ids from %s", e.ch.Servers[i].Addr())
	}
}

func TestReplicatedSinkCreatesSchemaOnClusterAndLandsOnEveryReplica(t *testing.T) {
	e := newReplicatedEnv(t)
	const shards = 4
	e.startSink(e.replicatedConfig(shards))

	// The sink runs once one replica of each shard holds the tables; the
	// others run the statements queued on cluster from their DDL queue,
	// each in its own time.
	for i, srv := range e.ch.Servers {
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			rows, err := e.conns[i].Query(ctx, "SELECT name, engine, engine_full FROM system.tables WHERE database = 'surge' ORDER BY name")
			if !assert.NoError(c, err) {
				return
			}
			defer rows.Close()
			got := map[string][2]string{}
			for rows.Next() {
				var name, engine, full string
				assert.NoError(c, rows.Scan(&name, &engine, &full))
				got[name] = [2]string{engine, full}
			}
			assert.NoError(c, rows.Err())
			assert.Equal(c, "ReplicatedReplacingMergeTree", got["events_local"][0], "on %s", srv.Addr())
			assert.Contains(c, got["events_local"][1], "'/clickhouse/tables/{shard}/surge/events_local', '{replica}'")
			assert.Equal(c, "Distributed", got["events"][0], "on %s", srv.Addr())
		}, 30*time.Second, 50*time.Millisecond)
	}

	last := map[int]uint64{}
	for k := range shards {
		for _, r := range [][2]uint64{{1, 4}, {5, 9 + uint64(k)}} {
			b := makeBatch(k, r[0], r[1])
			e.publish(b, b.ID())
			last[k] = r[1]
		}
	}
	e.requireExactlyOnce(last)
}

// loader publishes batches of every shard until stopped and remembers the
// last sequence published per shard.
type loader struct {
	mu   sync.Mutex
	last map[int]uint64
}

func (l *loader) lastOf(k int) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last[k]
}

// run publishes one batch of perBatch EVENTS messages per shard every
// period until ctx ends.
func (l *loader) run(ctx context.Context, e *testEnv, shards, perBatch int, period time.Duration) error {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		for k := range shards {
			first := l.lastOf(k) + 1
			b := makeBatch(k, first, first+uint64(perBatch)-1)
			if err := e.tryPublish(b, b.ID()); err != nil {
				return err
			}
			l.mu.Lock()
			l.last[k] = b.LastSeq
			l.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// maxSeq is the highest sequence of sink shard k on server i.
func (e *testEnv) maxSeq(i, k int) (uint64, error) {
	return e.tryUint(i, "SELECT max(seq) FROM surge.events_local WHERE shard = ?", k)
}

func TestReplicatedSinkFailsOverAndTheReplicaCatchesUp(t *testing.T) {
	e := newReplicatedEnv(t)
	const shards = 2 // sink shard k on clickhouse shard k
	s := e.startSink(e.replicatedConfig(shards))

	l := &loader{last: map[int]uint64{}}
	ctx, stopLoad := context.WithCancel(t.Context())
	loadDone := make(chan error, 1)
	go func() { loadDone <- l.run(ctx, e, shards, 5, 100*time.Millisecond) }()
	defer func() {
		stopLoad()
		<-loadDone
	}()

	// Under load, shard 0 writes to its first replica.
	victim, other := server(0, 0), server(0, 1)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.maxSeq(victim, 0)
		assert.NoError(c, err)
		assert.GreaterOrEqual(c, n, uint64(50))
	}, 30*time.Second, 20*time.Millisecond)

	// A stopping server refuses new connections and resets the open ones
	// at once, but takes ~10 s to exit while clients hold idle pooled
	// connections: the sink must not wait for that.
	stopped := time.Now()
	atStop := l.lastOf(0)
	stopDone := make(chan error, 1)
	go func() { stopDone <- e.ch.Servers[victim].Stop() }()
	// Failover: an attempt on the stopped replica fails, and the sink lands
	// the batches published after the stop on the other replica.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Greater(c, value(s.shard(0).Retries), 0.0, "an attempt failed")
		n, err := e.maxSeq(other, 0)
		assert.NoError(c, err)
		assert.Greater(c, n, atStop)
	}, 30*time.Second, 10*time.Millisecond)
	failover := time.Since(stopped)
	t.Logf("failover: shard 0 landed a batch published after its replica was stopped on the other replica %s after the stop", failover.Round(time.Millisecond))
	require.Less(t, failover, 5*time.Second)
	require.NoError(t, <-stopDone)
	t.Logf("the replica exited %s after the stop", time.Since(stopped).Round(time.Millisecond))

	// Let the survivor take more load alone (the stopping server still
	// fetched parts until it exited), then bring the victim back.
	more := l.lastOf(0) + 50
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.maxSeq(other, 0)
		assert.NoError(c, err)
		assert.GreaterOrEqual(c, n, more)
	}, 30*time.Second, 10*time.Millisecond)
	// The server fetches what it missed as soon as it has attached its
	// tables, before its port accepts: time the catch-up from the start.
	restarted := time.Now()
	atRestart := l.lastOf(0)
	missed := atRestart - atStop
	startCtx, cancel := context.WithTimeout(t.Context(), time.Minute)
	require.NoError(t, e.ch.Servers[victim].Start(startCtx))
	cancel()
	t.Logf("the replica accepts connections %s after its start", time.Since(restarted).Round(time.Millisecond))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.tryUint(victim, "SELECT count() FROM surge.events_local WHERE shard = 0 AND seq <= ?", atRestart)
		assert.NoError(c, err)
		assert.Equal(c, uint64(rowsIn(1, atRestart)), n)
	}, 30*time.Second, 10*time.Millisecond)
	t.Logf("catch-up: the restarted replica held every row of shard 0 published before its restart (%d rows, %d batches published since its stop began) %s after its start",
		rowsIn(1, atRestart), missed/5, time.Since(restarted).Round(time.Millisecond))

	stopLoad()
	require.NoError(t, <-loadDone)
	loadDone <- nil // for the deferred stop
	e.requireExactlyOnce(map[int]uint64{0: l.lastOf(0), 1: l.lastOf(1)})
}

func TestReplicatedStoreRetriesTheIdenticalBlockOnALaggingReplica(t *testing.T) {
	e := newReplicatedEnv(t)
	cfg := e.replicatedConfig(2).ClickHouse
	st, err := sink.OpenStore(cfg, shardAddrs(e.ch)[0])
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	ctx := t.Context()
	require.NoError(t, st.EnsureSchema(ctx))

	first, second := server(0, 0), server(0, 1)
	// The second replica lags: it fetches no part until told to.
	require.NoError(t, e.conns[second].Exec(ctx, "SYSTEM STOP FETCHES surge.events_local"))

	b1 := makeBatch(0, 1, 5)
	require.NoError(t, st.Insert(ctx, b1), "insert through the first replica")
	require.Equal(t, uint64(b1.Len()), e.count(first, "SELECT count() FROM surge.events_local"))

	// The identical block again, on the replica that has not seen it (a
	// retry after a failover when the first attempt did land): the block
	// is known to the shard's table in ZooKeeper and stored nowhere again.
	bt, err := e.conns[second].PrepareBatch(ctx, sink.InsertQuery("surge"))
	require.NoError(t, err)
	require.NoError(t, sink.AppendBatch(bt, b1))
	require.NoError(t, bt.Send())
	require.Zero(t, e.count(second, "SELECT count() FROM surge.events_local"), "deduplicated, not stored")

	// The first replica stops: the next attempt goes to the lagging one,
	// which holds none of b1 and cannot tell it absent while the first
	// is silent. The store answers the committed floor, so the sink cuts
	// the batch in hand where it did before and sends the identical block.
	require.NoError(t, e.ch.Servers[first].Stop())
	_, err = st.Present(ctx, 0, b1)
	require.ErrorContains(t, err, "next attempt on replica "+e.ch.Servers[second].Addr())
	_, err = st.Present(ctx, 0, b1)
	require.Error(t, err)
	require.Regexp(t, regexp.QuoteMeta(e.ch.Servers[second].Addr())+` 1 (parts to fetch|replication log entries to copy)\)`, err.Error(),
		"the lagging replica has not fetched b1")
	require.Equal(t, b1.LastSeq, st.Floor(0), "a lagging replica does not lower the floor")
	require.Zero(t, e.count(second, "SELECT count() FROM surge.events_local"))

	b2 := makeBatch(0, 6, 9)
	require.NoError(t, st.Insert(ctx, b2), "insert through the second replica")
	require.Equal(t, uint64(b2.Len()), e.count(second, "SELECT count() FROM surge.events_local"))

	// Fetches resume and the first replica returns: both hold both
	// batches, each once.
	require.NoError(t, e.conns[second].Exec(ctx, "SYSTEM START FETCHES surge.events_local"))
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	require.NoError(t, e.ch.Servers[first].Start(startCtx))
	cancel()
	for _, i := range []int{first, second} {
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			n, err := e.tryUint(i, "SELECT count() FROM surge.events_local")
			assert.NoError(c, err)
			assert.Equal(c, uint64(b1.Len()+b2.Len()), n)
		}, 30*time.Second, 20*time.Millisecond, "server %s", e.ch.Servers[i].Addr())
		require.Equal(t, expectedRows(0, 1, 9), e.rowsOfShard(i, 0))
	}
}

// storeOnLaggingReplica opens a store on the replicas of ClickHouse shard
// 0 whose sink shard 0 writes to the second replica first, and stops that
// replica's fetches: it sees no part the first takes until the test (or
// its cleanup) starts them again.
func (e *testEnv) storeOnLaggingReplica() (st sink.Store, first, second int) {
	t := e.t
	first, second = server(0, 0), server(0, 1)
	addrs := strings.Split(shardAddrs(e.ch)[0], sink.ReplicaSeparator)
	st, err := sink.OpenStore(e.replicatedConfig(2).ClickHouse, addrs[1]+sink.ReplicaSeparator+addrs[0])
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	require.NoError(t, st.EnsureSchema(t.Context()))
	require.NoError(t, e.conns[second].Exec(t.Context(), "SYSTEM STOP FETCHES surge.events_local"))
	t.Cleanup(func() { _ = e.conns[second].Exec(context.Background(), "SYSTEM START FETCHES surge.events_local") })
	return st, first, second
}

// seqSet is the set of b's EVENTS sequences, as Present answers.
func seqSet(b *batch.Batch) map[uint64]struct{} {
	out := make(map[uint64]struct{}, len(b.Seq))
	for _, seq := range b.Seq {
		out[seq] = struct{}{}
	}
	return out
}

// insertThrough inserts b on server i as the sink does, bypassing it.
func (e *testEnv) insertThrough(i int, b *batch.Batch) {
	t := e.t
	bt, err := e.conns[i].PrepareBatch(t.Context(), sink.InsertQuery("surge"))
	require.NoError(t, err)
	require.NoError(t, sink.AppendBatch(bt, b))
	require.NoError(t, bt.Send())
}

// A batch that landed on one replica and not yet on the other (its fetches
// stopped here; in a cluster, a fetch waiting behind a column's ALTER) is
// present for a store whose shard writes to the lagging replica: the
// shard's next owner after a failover reads every replica, and inserts
// nothing again.
func TestReplicatedPresenceAsksEveryReplica(t *testing.T) {
	e := newReplicatedEnv(t)
	ctx := t.Context()
	st, first, second := e.storeOnLaggingReplica()

	// b1 landed through the first replica, by an owner before this one.
	b1 := makeBatch(0, 1, 5)
	e.insertThrough(first, b1)
	require.Zero(t, e.count(second, "SELECT count() FROM surge.events_local"), "the second replica lags")

	present, err := st.Present(ctx, 0, b1)
	require.NoError(t, err)
	require.Equal(t, seqSet(b1), present, "b1 is present on the shard, through the first replica")
}

// A batch that landed on one replica alone, which then went down before
// the other fetched it, cannot be told present or absent from the other:
// the presence read fails (the shard waits, inserting nothing) while the
// silent replica may hold the only copy, and counts again once an
// answering replica holds every committed part. With the replicas caught
// up, one down does not stop it.
func TestReplicatedPresenceWaitsForASilentReplica(t *testing.T) {
	e := newReplicatedEnv(t)
	ctx := t.Context()
	st, first, second := e.storeOnLaggingReplica()

	// b1 landed through the first replica, which went down before the
	// second fetched it.
	b1 := makeBatch(0, 1, 5)
	e.insertThrough(first, b1)
	require.NoError(t, e.ch.Servers[first].Kill())
	_, err := st.Present(ctx, 0, b1)
	require.ErrorContains(t, err, "replica "+e.ch.Servers[first].Addr()+" does not answer")
	// The second replica lacks b1's part either way: its log entry is
	// copied into the replica's queue (a part to fetch) or not yet.
	require.Error(t, err)
	require.Regexp(t, regexp.QuoteMeta(e.ch.Servers[second].Addr())+` 1 (parts to fetch|replication log entries to copy)\)`, err.Error())
	require.Equal(t, sink.Transient, sink.Classify(err), "the shard waits, it does not dead-letter")

	// The first replica is back and answers: b1 is present.
	require.NoError(t, e.ch.Servers[first].Start(ctx))
	want := seqSet(b1)
	present, err := st.Present(ctx, 0, b1)
	require.NoError(t, err)
	require.Equal(t, want, present, "b1 present, through the first replica")

	// Once the second fetched b1 it is caught up and alone tells, with
	// the first down again: a batch never inserted is absent, b1 present.
	require.NoError(t, e.conns[second].Exec(ctx, "SYSTEM START FETCHES surge.events_local"))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.tryUint(second, "SELECT count() FROM surge.events_local")
		assert.NoError(c, err)
		assert.Equal(c, uint64(b1.Len()), n)
	}, time.Minute, 20*time.Millisecond, "the second replica fetches b1")
	require.NoError(t, e.ch.Servers[first].Kill())
	b2 := makeBatch(0, 6, 8)
	present, err = st.Present(ctx, 0, b2)
	require.NoError(t, err)
	require.Empty(t, present)
	present, err = st.Present(ctx, 0, b1)
	require.NoError(t, err)
	require.Equal(t, want, present)
	require.NoError(t, e.ch.Servers[first].Start(ctx))
}

// A replica that hangs mid-query (SIGSTOPped here, over a connection the
// store already holds; a restarted replica waiting on ZooKeeper or a lock
// looks the same from the client) has its own timeout: the schema is
// found through the next replica, and the hung one does not eat the
// caller's whole attempt.
func TestReplicatedStoreFindsSchemaPastAHungReplica(t *testing.T) {
	e := newReplicatedEnv(t)
	cfg := e.replicatedConfig(2).ClickHouse
	cfg.InsertTimeout = 2 * time.Second
	st, err := sink.OpenStore(cfg, shardAddrs(e.ch)[0])
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	require.NoError(t, st.EnsureSchema(ctx))
	cancel()

	hung, next := server(0, 0), server(0, 1)
	pid := e.ch.Servers[hung].PID()
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	st.ForgetSchema()

	// One replica timeout and the next replica's look-up fit; the whole
	// bound is what the hung replica took when it had no timeout of its
	// own.
	ctx, cancel = context.WithTimeout(t.Context(), 3*cfg.InsertTimeout)
	require.NoError(t, st.EnsureSchema(ctx))
	cancel()

	// Inserts, each bounded as the shard loop bounds them: the first
	// waits out the hung replica, the next lands on the other.
	b := makeBatch(0, 1, 5)
	ctx, cancel = context.WithTimeout(t.Context(), cfg.InsertTimeout)
	require.ErrorContains(t, st.Insert(ctx, b), "next attempt on replica "+e.ch.Servers[next].Addr())
	cancel()
	ctx, cancel = context.WithTimeout(t.Context(), cfg.InsertTimeout)
	require.NoError(t, st.Insert(ctx, b))
	cancel()
	require.Equal(t, uint64(b.Len()), e.count(next, "SELECT count() FROM surge.events_local"))
}
