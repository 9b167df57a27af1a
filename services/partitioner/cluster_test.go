package partitioner

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

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natscluster"
)

// clusterMargin bounds, in the cluster test, how long after losing a
// stream leader every request stored in INGEST since is partitioned and
// acked: publish_timeout plus this margin. A SIGKILL costs a raft election
// (4-8 s measured here), a SIGTERM hands the leadership over within
// milliseconds; but an EVENTS PubAck in flight when the leader goes is
// lost either way, and its request is naked and republished only when the
// PubAck wait (publish_timeout, 10 s) runs out. The messages are kept
// alive meanwhile, so no AckWait is waited out: the bound is well below
// the 30 s AckWait the partitioner had before its keepalive. Every request
// was acked again 0.3-10.1 s after the fault in most runs, and once past
// publish_timeout + 5 s in a suite run: the margin is 8 s, so a second
// publish_timeout waited out still fails.
const (
	clusterMargin = 8 * time.Second
	// clusterEventsPerRequest is the events of one INGEST request.
	clusterEventsPerRequest = 4
)

// TestClusterLeaderLoss partitions a steady feed of INGEST requests on a
// 3-node NATS cluster with every stream at R3, while the leader of INGEST
// and then of EVENTS is SIGKILLed, and one is SIGTERMed (each node is
// restarted after). After each fault the partitioner acks every request
// stored since within a bound; at the end every event is in EVENTS once.
func TestClusterLeaderLoss(t *testing.T) {
	c := natscluster.Start(t, 3)

	cfg := DefaultConfig()
	cfg.NATS.URL = c.URLs()
	cfg.NATS.ConnectTimeout = 10 * time.Second
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Streams.Replicas = 3
	cfg.Streams.MaxBytes = 64 << 20
	cfg.Shards = 4
	cfg.FetchBatch = 64
	cfg.FetchMaxWait = 100 * time.Millisecond
	cfg.InfoInterval = 500 * time.Millisecond
	start(t, cfg)

	feed, err := c.Feed(4*time.Millisecond, func(n int) *nats.Msg {
		events := make([]event.Event, clusterEventsPerRequest)
		at := time.UnixMicro(1_700_000_000_000_000).UTC()
		for j := range events {
			events[j] = event.Event{
				EventID: fmt.Sprintf("r%d-e%d", n, j), Tenant: "acme", UserID: "u" + strconv.Itoa(n*clusterEventsPerRequest+j),
				Type: "click", TS: at, ReceivedAt: at, Properties: "{}",
			}
		}
		m := nats.NewMsg(streams.IngestSubject("acme"))
		m.Data = event.AppendEncoded(nil, events)
		m.Header.Set(jetstream.MsgIDHeader, "r"+strconv.Itoa(n))
		m.Header.Set(streams.HeaderRows, strconv.Itoa(len(events)))
		return m
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = feed.Stop() })

	// ackedThrough waits, at most bound, until the partitioner has acked
	// every INGEST request up to seq, and returns when it had.
	ackedThrough := func(seq uint64, bound time.Duration) time.Time {
		t.Helper()
		var floor uint64
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			js, err := c.JetStream()
			if !assert.NoError(co, err) {
				return
			}
			cons, err := js.Consumer(ctx, streams.Ingest, ConsumerName("acme"))
			if !assert.NoError(co, err) {
				return
			}
			floor = cons.CachedInfo().AckFloor.Stream
			assert.GreaterOrEqual(co, floor, seq, "partitioner's ack floor")
		}, bound, 20*time.Millisecond, "partitioner acks INGEST through seq %d within %s (ack floor %d)", seq, bound, floor)
		return time.Now()
	}
	// storedAfter waits for the first request the feed stored after t0.
	storedAfter := func(t0 time.Time, bound time.Duration) natscluster.Acked {
		t.Helper()
		var first []natscluster.Acked
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			var ok bool
			first, ok = feed.FirstAckedAfter(t0, 1, func(int) int { return 0 })
			assert.True(co, ok, "a request stored after %s", t0.Format(time.TimeOnly))
		}, bound, 10*time.Millisecond)
		return first[0]
	}

	bound := cfg.PublishTimeout + clusterMargin
	start := time.Now()
	ackedThrough(storedAfter(start, 10*time.Second).Seq, 15*time.Second)

	for _, fault := range []struct {
		name   string
		stream string
		do     func(int) error
		bound  time.Duration
	}{
		{"SIGKILL", streams.Ingest, c.Kill, bound},
		{"SIGKILL", streams.Events, c.Kill, bound},
		{"SIGTERM", streams.Events, c.Stop, bound},
	} {
		leader, err := c.StreamLeader(fault.stream)
		require.NoError(t, err)
		consumerLeader, err := c.ConsumerLeader(streams.Ingest, ConsumerName("acme"))
		require.NoError(t, err)
		led := leads(c, leader)
		faultAt := time.Now()
		require.NoError(t, fault.do(leader))
		killed := time.Since(faultAt)
		// A PubAck read after the node exited came from the stream's new
		// leader; one read before it may still be the old leader's.
		next := storedAfter(faultAt.Add(killed), fault.bound)
		done := ackedThrough(next.Seq, fault.bound)
		newLeader, err := c.WaitStreamLeader(fault.stream, leader, bound)
		require.NoError(t, err)
		t.Logf("%s of %s's leader %s (leading %v, INGEST's consumer too: %v; took %s): %s leads; INGEST stored again after %s, every request since acked after %s",
			fault.name, fault.stream, c.Name(leader), led, consumerLeader == leader, killed.Round(time.Millisecond), c.Name(newLeader),
			next.At.Sub(faultAt).Round(time.Millisecond), done.Sub(faultAt).Round(time.Millisecond))
		assert.LessOrEqual(t, done.Sub(faultAt), bound, "%s of %s's leader: %s again within the bound", fault.name, fault.stream, "every request acked")
		require.NoError(t, c.Restart(leader))
	}
	require.NoError(t, feed.Stop())
	acked := feed.Acked()
	last := acked[len(acked)-1]
	ackedThrough(last.Seq, 15*time.Second)

	// INGEST is empty, and EVENTS holds every event of every stored
	// request once.
	js, err := c.JetStream()
	require.NoError(t, err)
	// A work queue removes an acked message by a proposal of its own, which
	// the stream's replicas apply after the consumer's ack floor moved.
	require.EventuallyWithT(t, func(co *assert.CollectT) {
		ingest, err := c.StreamInfo(streams.Ingest)
		if assert.NoError(co, err) {
			assert.Zero(co, ingest.State.Msgs, "INGEST after the partitioner acked everything")
		}
	}, 10*time.Second, 20*time.Millisecond)
	info, err := c.StreamInfo(streams.Events)
	require.NoError(t, err)
	// A read is tried again from the start when it fails: an ordered
	// consumer made just after a node restarted may find no responders.
	var seen map[string]int
	require.EventuallyWithT(t, func(co *assert.CollectT) {
		var err error
		seen, err = readClusterEvents(t.Context(), js, info.State.Msgs)
		assert.NoError(co, err)
	}, 30*time.Second, 100*time.Millisecond, "read EVENTS")
	require.NoError(t, feed.Once(seen, func(n int) []string {
		ids := make([]string, clusterEventsPerRequest)
		for j := range ids {
			ids[j] = fmt.Sprintf("r%d-e%d", n, j)
		}
		return ids
	}), "events in EVENTS")
	t.Logf("%d requests (%d events) partitioned, each event in EVENTS once", len(acked), len(seen))
}

// readClusterEvents counts the events of the first msgs messages of EVENTS by id.
func readClusterEvents(ctx context.Context, js jetstream.JetStream, msgs uint64) (map[string]int, error) {
	st, err := js.Stream(ctx, streams.Events)
	if err != nil {
		return nil, err
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	seen := map[string]int{}
	for got := uint64(0); got < msgs; {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		before := got
		for m := range batch.Messages() {
			got++
			events, err := event.Decode(m.Data())
			if err != nil {
				return nil, err
			}
			for _, e := range events {
				seen[e.EventID]++
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("after %d of %d messages: %w", got, msgs, err)
		}
		if got == before {
			return nil, fmt.Errorf("no message after %d of %d", got, msgs)
		}
	}
	return seen, nil
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
