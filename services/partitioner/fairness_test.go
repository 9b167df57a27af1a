package partitioner

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/tenants"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
	"github.com/surge-events/surge/pkg/testkit/producers"
)

// TestTenantBacklogDoesNotHoldBackOthers: tenant A's producer has 200,000
// events (2,000 messages of 100) waiting in INGEST when the partitioner
// starts; once it is partitioning them, tenant B sends 20 requests over
// HTTP. B's requests are all in EVENTS after a few turns of A's, not after
// A's backlog: counted in EVENTS' own order (the work done, not the time
// taken), few of A's messages land between B's arrival and B's last
// group. Then all of A lands too, every event of A and B once.
func TestTenantBacklogDoesNotHoldBackOthers(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	const (
		aMsgs, aEvents = 2000, 100
		bMsgs, bEvents = 20, 10
	)
	want := publishBacklog(t, js, "A", aMsgs, aEvents) // event id -> tenant

	cfg := testConfig(ns.ClientURL())
	cfg.Workers = 2
	cfg.FetchBatch = 10
	cfg.InfoInterval = 20 * time.Millisecond
	start(t, cfg)

	// A is being partitioned: B's requests arrive behind A's backlog in
	// INGEST's order.
	events, err := js.Stream(t.Context(), streams.Events)
	require.NoError(t, err)
	var mark uint64 // EVENTS' last sequence when B sends
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		info, err := events.Info(t.Context())
		if assert.NoError(c, err) {
			mark = info.State.LastSeq
			assert.Positive(c, mark)
		}
	}, 30*time.Second, time.Millisecond)
	at := time.UnixMicro(1_700_000_000_000_000).UTC()
	for i := range bMsgs {
		evs := make([]event.Event, bEvents)
		for j := range evs {
			id := fmt.Sprintf("b-%d-%d", i, j)
			evs[j] = event.Event{EventID: id, Tenant: "B", UserID: "v" + strconv.Itoa(j), Type: "click", TS: at, ReceivedAt: at, Properties: "{}"}
			want[id] = "B"
		}
		_, err := js.Publish(t.Context(), streams.IngestSubject("B"), event.AppendEncoded(nil, evs))
		require.NoError(t, err)
	}

	waitDrainedWithin(t, js, 3*time.Minute)
	got := readEvents(t, js) // in EVENTS order: got[i] is sequence i+1
	// aSeen counts A's INGEST messages with a group in EVENTS up to a
	// position.
	aSeen := func(through int) int {
		seen := map[string]bool{}
		for _, m := range got[:through] {
			if m.events[0].Tenant == "A" {
				seq, _, _ := strings.Cut(m.msgID, ":")
				seen[seq] = true
			}
		}
		return len(seen)
	}
	lastB := -1
	for i, m := range got {
		if m.events[0].Tenant == "B" {
			lastB = i
		}
	}
	require.GreaterOrEqual(t, lastB, 0)
	atMark, atLastB := aSeen(int(mark)), aSeen(lastB+1)
	t.Logf("A's messages in EVENTS: %d when B sent, %d when B's last group landed (of %d)", atMark, atLastB, aMsgs)
	// After discovery finds B (within info_interval, 20 ms here) every
	// other turn is B's: B's 20 requests take 2 turns of 10, A gets about
	// as many meanwhile, plus the turns in flight. 500 of A's messages
	// (50 turns) leave room for discovery's delay on a loaded machine;
	// served in INGEST's order, B would have waited for all 2,000.
	require.LessOrEqual(t, atLastB-atMark, 500, "A's messages partitioned while B's waited")
	require.Less(t, atLastB, aMsgs/2)

	requireEachOnce(t, got, want)
}

// requireEachOnce checks that EVENTS holds every event of want (id ->
// tenant) once, and nothing else.
func requireEachOnce(t *testing.T, got []eventsMsg, want map[string]string) {
	t.Helper()
	seen := map[string]int{}
	for _, m := range got {
		require.Equal(t, strconv.Itoa(len(m.events)), m.rows)
		for _, e := range m.events {
			seen[e.EventID]++
			require.Equal(t, want[e.EventID], e.Tenant, "event %s", e.EventID)
		}
	}
	require.Len(t, seen, len(want))
	for id, n := range seen {
		require.Equal(t, 1, n, "event %s", id)
	}
}

// publishBacklog publishes a producer backlog of tenant to INGEST, msgs
// messages of perMsg events on surge.in.<tenant>.x, and returns its
// event ids with their tenant.
func publishBacklog(t *testing.T, js jetstream.JetStream, tenant string, msgs, perMsg int) map[string]string {
	t.Helper()
	ids := map[string]string{}
	events := make([]producers.Event, perMsg)
	for i := range msgs {
		for j := range events {
			id := fmt.Sprintf("%s-%d-%d", strings.ToLower(tenant), i, j)
			events[j] = producers.Event{ID: id, UserID: fmt.Sprintf("u%d", (i*perMsg+j)%997), Type: "click"}
			ids[id] = tenant
		}
		_, err := js.PublishAsync(streams.ProducerPrefix+tenant+".x", producers.Message(events))
		require.NoError(t, err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatalf("%s's messages were not stored", tenant)
	}
	return ids
}

// TestQuotaPacesAProducersBacklog: tenant A has a quota of 2,000 events/s
// (burst 1,000) in the SURGE_TENANTS bucket and a producer backlog of
// 20,000 events in INGEST, which JetStream acked before any quota
// applied. The partitioner paces it: at every moment, A's events in
// EVENTS are at most the burst, the rate over the time since the start
// and one turn more, and the quota's waits are counted. Tenant B, with
// no quota, sends meanwhile and is partitioned at once, while most of A
// waits. Lifting A's quota at run time lets the rest through: every event
// once.
func TestQuotaPacesAProducersBacklog(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	const (
		rate, burst     = 2000, 1000
		aMsgs, aEvents  = 200, 100
		turn            = 10 // fetch_batch
		measureUntilAll = 6000
	)
	st, err := tenants.Open(t.Context(), js, 1)
	require.NoError(t, err)
	require.NoError(t, st.Set(t.Context(), "A", tenants.Limits{EventsPerSecond: rate, Burst: burst}))
	want := publishBacklog(t, js, "A", aMsgs, aEvents)

	tap := tapEvents(t, js.Conn())
	cfg := testConfig(ns.ClientURL())
	cfg.Workers = 2
	cfg.FetchBatch = turn
	cfg.InfoInterval = 20 * time.Millisecond
	started := time.Now()
	p := start(t, cfg)
	partitioned := func() int {
		n := 0
		for _, k := range eventsMetric(p) {
			n += k
		}
		return n
	}

	// A bound on what was let through by each moment: the burst, the
	// rate since the start, and one turn beyond the quota's room (a turn
	// takes one message at least, charged after).
	var n int
	var elapsed time.Duration
	for n < measureUntilAll {
		n, elapsed = partitioned(), time.Since(started)
		require.LessOrEqual(t, float64(n), burst+rate*elapsed.Seconds()+turn*aEvents, "A's events partitioned after %s", elapsed)
		select {
		case <-time.After(10 * time.Millisecond):
		case <-t.Context().Done():
			t.FailNow()
		}
	}
	t.Logf("A's first %d events partitioned in %s at a quota of %d/s (burst %d)", n, elapsed.Round(time.Millisecond), rate, burst)
	require.Positive(t, testutil.ToFloat64(p.m.quotaWaits.WithLabelValues("A")), "A's turns waited for its quota")

	// B has no quota: its request passes A's paced backlog.
	at := time.UnixMicro(1_700_000_000_000_000).UTC()
	evs := []event.Event{{EventID: "b-0", Tenant: "B", UserID: "v", Type: "click", TS: at, ReceivedAt: at, Properties: "{}"}}
	want["b-0"] = "B"
	_, err = js.Publish(t.Context(), streams.IngestSubject("B"), event.AppendEncoded(nil, evs))
	require.NoError(t, err)
	var aAtB int
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var ok bool
		aAtB, ok = tap.beforeB()
		assert.True(c, ok, "B's event in EVENTS")
	}, 30*time.Second, 10*time.Millisecond)
	t.Logf("B's event partitioned after %d of A's %d", aAtB, aMsgs*aEvents)
	require.Less(t, aAtB, aMsgs*aEvents/2, "B waited for most of A's backlog")

	// Lifted at run time: the rest of A at full speed, every event once.
	require.NoError(t, st.Unset(t.Context(), "A"))
	waitDrainedWithin(t, js, time.Minute)
	requireEachOnce(t, readEvents(t, js), want)
}

// waitDrainedWithin is waitDrained with its own bound.
func waitDrainedWithin(t *testing.T, js jetstream.JetStream, bound time.Duration) {
	t.Helper()
	drained := assert.EventuallyWithT(t, func(c *assert.CollectT) {
		st, err := js.Stream(t.Context(), streams.Ingest)
		if assert.NoError(c, err) {
			assert.Zero(c, st.CachedInfo().State.Msgs, "INGEST messages")
		}
	}, bound, 50*time.Millisecond)
	if !drained {
		t.FailNow()
	}
	waitDrained(t, js)
}

// eventsTap counts A's events as the partitioner publishes them to
// EVENTS, and how many there were when B's first arrived.
type eventsTap struct {
	mu       sync.Mutex
	a        int
	aAtB     int
	bArrived bool
}

func tapEvents(t *testing.T, nc *nats.Conn) *eventsTap {
	t.Helper()
	tap := &eventsTap{}
	sub, err := nc.Subscribe("events.shard.*", func(m *nats.Msg) {
		evs, err := event.Decode(m.Data)
		if err != nil {
			return
		}
		tap.mu.Lock()
		defer tap.mu.Unlock()
		for _, e := range evs {
			if e.Tenant != "B" {
				tap.a++
			} else if !tap.bArrived {
				tap.bArrived, tap.aAtB = true, tap.a
			}
		}
	})
	require.NoError(t, err)
	require.NoError(t, sub.SetPendingLimits(-1, -1))
	require.NoError(t, nc.Flush())
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return tap
}

// beforeB is how many of A's events EVENTS had when B's first arrived,
// and whether it has.
func (tap *eventsTap) beforeB() (int, bool) {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return tap.aAtB, tap.bArrived
}
