package sink_test

import (
	"context"
	"fmt"
	"strings"
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
	"github.com/surge-events/surge/pkg/testkit/natscluster"
	"github.com/surge-events/surge/services/sink"
)

// clusterShards is the number of sink shards of the cluster test.
const clusterShards = 2

// clusterURLs makes a natscluster.Cluster the testEnv's server.
type clusterURLs struct{ c *natscluster.Cluster }

func (u clusterURLs) ClientURL() string { return u.c.URLs() }

// TestSinkClusterLeaderLoss lands a steady feed of batches from BATCHES
// at R3 on a 3-node NATS cluster into ClickHouse, while the leader of
// BATCHES and the leader of a sink consumer are SIGKILLed, and the
// BATCHES leader is SIGTERMed (each node restarted after). After each
// fault, every shard lands every batch stored since within a bound of an
// election plus a margin, below the ack wait: no shard waits out its ack
// wait for a delivery or an ack lost in the leader change. At the end
// ClickHouse holds every acked batch's rows exactly once.
func TestSinkClusterLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster and ClickHouse")
	}
	c := natscluster.Start(t, 3)
	js, err := c.JetStream()
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	ch, err := chserver.StartCluster(ctx, t.TempDir(), 2)
	require.NoError(t, err)
	t.Cleanup(ch.Stop)
	e := &testEnv{t: t, ns: clusterURLs{c}, js: js, ch: ch}
	for _, addr := range ch.Addrs() {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 5 * time.Second})
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		e.conns = append(e.conns, conn)
	}

	cfg := e.config(clusterShards)
	// An ack wait far above an election, so a shard that waited one out
	// (a delivery or an ack lost with a leader) breaks the bound below.
	cfg.AckWait = time.Minute
	cfg.Streams.Replicas = 3
	cfg.NATS.ConnectTimeout = 10 * time.Second
	require.NoError(t, streams.Ensure(ctx, js, cfg.Streams))
	e.startSink(cfg)

	// 50 batches a second, which the sink lands with room to spare on a
	// loaded machine, so what is measured is waiting, not catching up.
	// Message n is batch n/clusterShards+1 of shard n%clusterShards, one
	// EVENTS sequence per batch, so shard k's batches are k's sequences 1, 2, ...
	feed, err := c.Feed(20*time.Millisecond, func(n int) *nats.Msg {
		k, seq := n%clusterShards, uint64(n/clusterShards+1)
		b := makeBatch(k, seq, seq)
		msg := nats.NewMsg(streams.BatchesSubject(k))
		msg.Data = batch.Encode(b)
		msg.Header.Set(jetstream.MsgIDHeader, b.ID())
		msg.Header.Set(streams.HeaderBatchID, b.ID())
		msg.Header.Set(streams.HeaderFirstSeq, fmt.Sprint(b.FirstSeq))
		msg.Header.Set(streams.HeaderLastSeq, fmt.Sprint(b.LastSeq))
		msg.Header.Set(streams.HeaderRows, fmt.Sprint(b.Len()))
		return msg
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = feed.Stop() })

	// storedAfter waits for a batch of each shard that the feed stored
	// after t0 and returns the EVENTS sequence each ends at.
	storedAfter := func(t0 time.Time, bound time.Duration) ([clusterShards]uint64, time.Time) {
		t.Helper()
		var seqs [clusterShards]uint64
		var at time.Time
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			first, ok := feed.FirstAckedAfter(t0, clusterShards, func(n int) int { return n % clusterShards })
			if !assert.True(co, ok, "a batch of each shard stored after %s", t0.Format(time.TimeOnly)) {
				return
			}
			at = first[0].At
			for k, a := range first {
				seqs[k] = uint64(a.N/clusterShards + 1)
				if a.At.Before(at) {
					at = a.At
				}
			}
		}, bound, 10*time.Millisecond)
		return seqs, at
	}
	// landedThrough waits, at most bound, until the ClickHouse server of
	// each shard k holds every row of k's sequences 1..seqs[k].
	landedThrough := func(seqs [clusterShards]uint64, bound time.Duration) time.Time {
		t.Helper()
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			for k, seq := range seqs {
				n, err := e.tryCount(k%2, "SELECT count() FROM surge.events_local WHERE shard = ? AND seq <= ?", k, seq)
				if assert.NoError(co, err, "shard %d", k) {
					assert.Equal(co, uint64(rowsIn(1, seq)), n, "shard %d: rows through sequence %d", k, seq)
				}
			}
		}, bound, 20*time.Millisecond, "every shard lands through %v within %s", seqs, bound)
		return time.Now()
	}

	// A SIGKILL costs an election (4-9 s measured here). A delivery or an
	// ack lost with the leader must not cost an ack wait more: the sink
	// has it handed out again at once. An election plus a margin for a
	// loaded machine bounds it; the feed's wait plus this one stay below
	// the ack wait, counted from the fault.
	bound := 25 * time.Second
	seqs, _ := storedAfter(time.Now(), 15*time.Second)
	landedThrough(seqs, 30*time.Second)

	consumerLeader := func(_ string) (int, error) { return c.ConsumerLeader(streams.Batches, sink.ConsumerName(0)) }
	for _, fault := range []struct {
		name, what string
		leader     func(string) (int, error)
		do         func(int) error
	}{
		{"SIGKILL", "BATCHES", c.StreamLeader, c.Kill},
		{"SIGKILL", "consumer " + sink.ConsumerName(0), consumerLeader, c.Kill},
		{"SIGTERM", "BATCHES", c.StreamLeader, c.Stop},
	} {
		leader, err := fault.leader(streams.Batches)
		require.NoError(t, err, "leader of %s", fault.what)
		faultAt := time.Now()
		require.NoError(t, fault.do(leader))
		seqs, storedAt := storedAfter(faultAt, bound)
		done := landedThrough(seqs, bound)
		t.Logf("%s of %s's leader %s: batches stored again after %s, every shard landed through them after %s",
			fault.name, fault.what, c.Name(leader),
			storedAt.Sub(faultAt).Round(time.Millisecond), done.Sub(faultAt).Round(time.Millisecond))
		require.NoError(t, c.Restart(leader))
	}

	require.NoError(t, feed.Stop())
	acked := feed.Acked()
	var last [clusterShards]uint64
	for _, a := range acked {
		if seq := uint64(a.N/clusterShards + 1); seq > last[a.N%clusterShards] {
			last[a.N%clusterShards] = seq
		}
	}
	landedThrough(last, 30*time.Second)

	// Every acked batch's rows once; the batch the feed's stop interrupted
	// (stored or not) at most once, and nothing else.
	for k, l := range last {
		interrupted := 0
		if sent := feed.Sent(); sent > len(acked) && (sent-1)%clusterShards == k {
			interrupted = rowsPerMsg(l + 1)
		}
		got := e.rowsOfShard(k%2, k)
		want := expectedRows(k, 1, l)
		if len(got) == len(want)+interrupted && interrupted > 0 {
			want = expectedRows(k, 1, l+1)
		}
		require.Equal(t, want, got, "rows of shard %d", k)
	}
	ids := make([]string, 0, len(acked))
	for _, a := range acked[max(0, len(acked)-3):] {
		ids = append(ids, fmt.Sprint(a.N))
	}
	t.Logf("%d batches acked by BATCHES (last messages %s), every row in ClickHouse once", len(acked), strings.Join(ids, ", "))
}
