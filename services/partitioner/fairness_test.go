package partitioner

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
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
	want := map[string]string{} // event id -> tenant
	for i := range aMsgs {
		var body strings.Builder
		body.WriteByte('[')
		for j := range aEvents {
			if j > 0 {
				body.WriteByte(',')
			}
			id := fmt.Sprintf("a-%d-%d", i, j)
			fmt.Fprintf(&body, `{"event_id":%q,"user_id":"u%d","type":"click"}`, id, (i*aEvents+j)%997)
			want[id] = "A"
		}
		body.WriteByte(']')
		_, err := js.PublishAsync("surge.in.A.x", []byte(body.String()))
		require.NoError(t, err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("A's messages were not stored")
	}

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

	// Every event of A and B once.
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
