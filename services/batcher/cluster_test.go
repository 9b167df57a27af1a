package batcher

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natscluster"
)

// clusterMargin bounds, in the cluster test, how long after losing a
// stream leader every shard has batched every EVENTS message stored since:
// publish_timeout plus this margin. A SIGKILL costs a raft election (4-8 s
// measured here) and, for the EVENTS leader, the ordered consumer's
// recreation; a batch whose PubAck was lost with its leader is published
// again only after publish_timeout (10 s). Both are well below a 30 s
// AckWait. Every shard was batched again 0.2-12.8 s after the fault in
// most runs, and once 15.3 s after a SIGKILL of the node leading EVENTS
// and BATCHES: the margin is 8 s, so a second publish_timeout waited out
// still fails.
const (
	clusterMargin = 8 * time.Second
	clusterShards = 2
	clusterRows   = 5 // events per EVENTS message
)

// TestClusterLeaderLoss batches a steady feed of EVENTS messages over two
// shards on a 3-node NATS cluster with every stream at R3, while the
// leader of EVENTS and then of BATCHES is SIGKILLed, and one is SIGTERMed
// (each node is restarted after). After each fault every shard batches
// every message stored since within a bound; at the end BATCHES holds
// every event once.
func TestClusterLeaderLoss(t *testing.T) {
	c := natscluster.Start(t, 3)

	cfg := DefaultConfig()
	cfg.NATS.URL = c.URLs()
	cfg.NATS.ConnectTimeout = 10 * time.Second
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Streams.Replicas = 3
	cfg.Streams.MaxBytes = 64 << 20
	cfg.Shards = clusterShards
	cfg.Policy = batch.Policy{MaxRows: 200, MaxBytes: 1 << 20, MaxAge: 200 * time.Millisecond}
	cfg.ShutdownTimeout = 5 * time.Second
	start(t, cfg, nil)

	feed, err := c.Feed(4*time.Millisecond, func(n int) *nats.Msg {
		at := time.UnixMicro(1_700_000_000_000_000).UTC()
		events := make([]event.Event, clusterRows)
		for j := range events {
			events[j] = event.Event{
				EventID: fmt.Sprintf("m%d-e%d", n, j), Tenant: "acme", UserID: "u" + strconv.Itoa(j),
				Type: "view", TS: at, ReceivedAt: at, Properties: "{}",
			}
		}
		m := nats.NewMsg(streams.EventsSubject(n % clusterShards))
		m.Data = event.AppendEncoded(nil, events)
		m.Header.Set(jetstream.MsgIDHeader, "m"+strconv.Itoa(n))
		m.Header.Set(streams.HeaderRows, strconv.Itoa(clusterRows))
		return m
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = feed.Stop() })
	js, err := c.JetStream()
	require.NoError(t, err)

	// storedAfter waits for the first message of each shard the feed
	// stored after t0, and returns their EVENTS sequences by shard.
	storedAfter := func(t0 time.Time, bound time.Duration) ([clusterShards]uint64, time.Time) {
		t.Helper()
		var seqs [clusterShards]uint64
		var at time.Time
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			first, ok := feed.FirstAckedAfter(t0, clusterShards, func(n int) int { return n % clusterShards })
			if !assert.True(co, ok, "a message of each shard stored after %s", t0.Format(time.TimeOnly)) {
				return
			}
			at = first[0].At
			for k, a := range first {
				seqs[k] = a.Seq
				if a.At.Before(at) {
					at = a.At
				}
			}
		}, bound, 10*time.Millisecond)
		return seqs, at
	}
	// batchedThrough waits, at most bound, until each shard k has a batch
	// in BATCHES that ends at or after seqs[k], and returns when it had.
	batchedThrough := func(seqs [clusterShards]uint64, bound time.Duration) time.Time {
		t.Helper()
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			st, err := js.Stream(ctx, streams.Batches)
			if !assert.NoError(co, err) {
				return
			}
			for k, seq := range seqs {
				raw, err := st.GetLastMsgForSubject(ctx, streams.BatchesSubject(k))
				if !assert.NoError(co, err, "shard %d", k) {
					continue
				}
				last, err := strconv.ParseUint(raw.Header.Get(streams.HeaderLastSeq), 10, 64)
				if assert.NoError(co, err) {
					assert.GreaterOrEqual(co, last, seq, "shard %d: last batched EVENTS sequence", k)
				}
			}
		}, bound, 20*time.Millisecond, "every shard batches through %v within %s", seqs, bound)
		return time.Now()
	}

	bound := cfg.PublishTimeout + clusterMargin
	seqs, _ := storedAfter(time.Now(), 10*time.Second)
	batchedThrough(seqs, 15*time.Second)

	for _, fault := range []struct {
		name   string
		stream string
		do     func(int) error
	}{
		{"SIGKILL", streams.Events, c.Kill},
		{"SIGKILL", streams.Batches, c.Kill},
		{"SIGTERM", streams.Batches, c.Stop},
	} {
		leader, err := c.StreamLeader(fault.stream)
		require.NoError(t, err)
		led := leads(c, leader)
		faultAt := time.Now()
		require.NoError(t, fault.do(leader))
		// A PubAck read after the node exited came from the stream's new
		// leader; one read before it may still be the old leader's.
		seqs, storedAt := storedAfter(time.Now(), bound)
		done := batchedThrough(seqs, bound)
		newLeader, err := c.WaitStreamLeader(fault.stream, leader, bound)
		require.NoError(t, err)
		t.Logf("%s of %s's leader %s (leading %v): %s leads; EVENTS stored again after %s, every shard batched through it after %s",
			fault.name, fault.stream, c.Name(leader), led, c.Name(newLeader),
			storedAt.Sub(faultAt).Round(time.Millisecond), done.Sub(faultAt).Round(time.Millisecond))
		assert.LessOrEqual(t, done.Sub(faultAt), bound, "%s of %s's leader: %s again within the bound", fault.name, fault.stream, "every shard batched")
		require.NoError(t, c.Restart(leader))
	}
	require.NoError(t, feed.Stop())
	acked := feed.Acked()
	var last [clusterShards]uint64
	for _, a := range acked {
		last[a.N%clusterShards] = a.Seq
	}
	batchedThrough(last, 15*time.Second)

	// BATCHES holds every event of every stored message once (and, at
	// most once, those of the message the feed's stop interrupted).
	info, err := c.StreamInfo(streams.Batches)
	require.NoError(t, err)
	seen := make(map[string]int, len(acked)*clusterRows)
	batches := 0
	ctx := t.Context()
	st, err := js.Stream(ctx, streams.Batches)
	require.NoError(t, err)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		require.NoError(t, err)
		b, err := batch.Decode(raw.Data)
		require.NoError(t, err)
		require.Equal(t, b.ID(), raw.Header.Get(jetstream.MsgIDHeader))
		for _, id := range b.EventID {
			seen[id]++
		}
		batches++
	}
	require.NoError(t, feed.Once(seen, func(n int) []string {
		ids := make([]string, clusterRows)
		for j := range ids {
			ids[j] = fmt.Sprintf("m%d-e%d", n, j)
		}
		return ids
	}), "events in BATCHES")
	t.Logf("%d EVENTS messages (%d events) in %d batches, each event once", len(acked), len(seen), batches)
}

// leads lists the streams node i leads.
func leads(c *natscluster.Cluster, i int) []string {
	var out []string
	for _, name := range []string{streams.Ingest, streams.Events, streams.Batches} {
		if l, err := c.StreamLeader(name); err == nil && l == i {
			out = append(out, name)
		}
	}
	return out
}
