package partitioner

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// fillBatches publishes n dummy batches to BATCHES, as if the sinks were
// behind by n.
func fillBatches(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	for range n {
		_, err := js.Publish(t.Context(), streams.BatchesSubject(0), []byte("batch"))
		require.NoError(t, err)
	}
}

// streamMsgs is the number of messages in the stream.
func streamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	return st.CachedInfo().State.Msgs, nil
}

// startHeld starts a partitioner with cfg beside a BATCHES of batches
// batches (more than its bound: the sinks are behind) and an INGEST of 30
// requests of 20 events from three tenants, published before it starts
// so that its first look sees each tenant's whole backlog. It is held back
// from the start.
func startHeld(t *testing.T, js jetstream.JetStream, cfg Config, batches int) (*Service, *observer.ObservedLogs, map[uint64]ingestReq) {
	t.Helper()
	require.NoError(t, streams.Ensure(t.Context(), js, cfg.Streams))
	fillBatches(t, js, batches)
	inputs := publishInputs(t, js, 30, 20)
	logger, logs := observed(t)
	p := startWith(t, cfg, logger)
	waitPartitioning(t, logs)
	require.Equal(t, 1.0, testutil.ToFloat64(p.m.heldBack), "held back from the start")
	return p, logs, inputs
}

// catchUp empties BATCHES, as sinks that caught up would, and checks
// that every request then reaches EVENTS once, acked once and never
// redelivered.
func catchUp(t *testing.T, js jetstream.JetStream, p *Service, inputs map[uint64]ingestReq) {
	t.Helper()
	b, err := js.Stream(t.Context(), streams.Batches)
	require.NoError(t, err)
	require.NoError(t, b.Purge(t.Context()))
	waitDrained(t, js)
	requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == len(inputs) }, 5*time.Second, 10*time.Millisecond)
	require.Zero(t, redeliveries(p))
}

// TestHoldsBackWhileTheSinksAreBehind: BATCHES holds more batches than
// the bound, so the partitioner fetches nothing: INGEST keeps every
// request, EVENTS gets nothing, for longer than the stall timeout, and
// that is no stall (/readyz ready, no stall counted, no consumer made
// again). Once the sinks catch up (BATCHES purged), every event reaches
// EVENTS once.
func TestHoldsBackWhileTheSinksAreBehind(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())
	cfg.MaxBatchesBacklog = 3
	// Each tenant's 10 messages are a backlog: more than a turn.
	cfg.FetchBatch = 2
	// A stall timeout shorter than the hold: a hold counted as a stall
	// would show.
	cfg.PublishTimeout = 500 * time.Millisecond
	cfg.StallTimeout = 1500 * time.Millisecond
	p, logs, inputs := startHeld(t, js, cfg, 4)

	// Twice the stall timeout, 30 of the gate's polls: nothing fetched.
	require.Never(t, func() bool {
		n, err := streamMsgs(t.Context(), js, streams.Events)
		return err != nil || n > 0
	}, 2*cfg.StallTimeout, 50*time.Millisecond, "EVENTS got messages while held back")
	n, err := streamMsgs(t.Context(), js, streams.Ingest)
	require.NoError(t, err)
	require.Equal(t, uint64(30), n, "INGEST keeps every request")
	require.Equal(t, 1.0, testutil.ToFloat64(p.m.heldBack))
	require.Greater(t, testutil.ToFloat64(p.m.heldBackSeconds), 2.0)
	code, body, err := readyz(p.AdminAddr())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	st, err := stalls(p)
	require.NoError(t, err)
	require.Zero(t, st, "a hold is no stall")
	require.Zero(t, logs.FilterMessage("consumer recreated").Len())
	require.Equal(t, 1, logs.FilterMessage("holding back: waiting on the sinks").
		FilterField(zap.Uint64("batches", 4)).FilterField(zap.Int("bound", 3)).Len())
	require.Zero(t, messagesMetric(p, outcomeAcked))

	// The sinks catch up.
	b, err := js.Stream(t.Context(), streams.Batches)
	require.NoError(t, err)
	require.NoError(t, b.Purge(t.Context()))
	waitDrained(t, js)
	perShard := requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 30 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, perShard, eventsMetric(p))
	require.Equal(t, 0.0, testutil.ToFloat64(p.m.heldBack))
	require.Equal(t, 1, logs.FilterMessage("resumed: the sinks caught up").Len())
	require.Zero(t, logs.FilterMessage("consumer recreated").Len())
	require.Zero(t, redeliveries(p))
	st, err = stalls(p)
	require.NoError(t, err)
	require.Zero(t, st)
}

// TestHoldLetsTenantsWithoutBacklogThrough: while the partitioner holds
// back, the tenants with a backlog (10 messages each, turns of 2) wait in
// INGEST, and a tenant that sends one request meanwhile has it
// partitioned at once: it does not wait for the sinks behind the others'
// backlog. Once the sinks catch up, every event reaches EVENTS once.
func TestHoldLetsTenantsWithoutBacklogThrough(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())
	cfg.MaxBatchesBacklog = 3
	cfg.FetchBatch = 2
	p, _, inputs := startHeld(t, js, cfg, 4)

	quiet := []event.Event{{EventID: "q-1", Tenant: "quiet", UserID: "u", Type: "click",
		TS: time.UnixMicro(1_700_000_000_000_000).UTC(), ReceivedAt: time.UnixMicro(1_700_000_000_000_000).UTC(), Properties: "{}"}}
	ack, err := js.Publish(t.Context(), streams.IngestSubject("quiet"), event.AppendEncoded(nil, quiet))
	require.NoError(t, err)
	inputs[ack.Sequence] = ingestReq{seq: ack.Sequence, events: quiet}
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 1 }, 10*time.Second, 10*time.Millisecond,
		"the request of the tenant without a backlog partitioned during the hold")
	n, err := streamMsgs(t.Context(), js, streams.Events)
	require.NoError(t, err)
	require.Equal(t, uint64(1), n, "EVENTS holds the one event of the tenant without a backlog")
	require.Equal(t, 1.0, testutil.ToFloat64(p.m.heldBack), "still holding back")

	catchUp(t, js, p, inputs)
}

// TestHoldLongerThanTenantIdle: a hold that outlasts tenant_idle lets the
// server remove the tenants' consumers, nobody pulling from them; their
// messages stay in INGEST, and once the gate opens the consumers are made
// again and every event reaches EVENTS once.
func TestHoldLongerThanTenantIdle(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())
	cfg.MaxBatchesBacklog = 1
	// Each tenant's 10 messages are a backlog: more than a turn.
	cfg.FetchBatch = 2
	cfg.PublishTimeout = 500 * time.Millisecond
	cfg.TenantIdle = 1500 * time.Millisecond
	p, logs, inputs := startHeld(t, js, cfg, 2)
	// Discovery makes the tenants' consumers; the server removes them.
	consumers := func(want int) {
		t.Helper()
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			st, err := js.Stream(t.Context(), streams.Ingest)
			if !assert.NoError(c, err) {
				return
			}
			n := 0
			for range st.ConsumerNames(t.Context()).Name() {
				n++
			}
			assert.Equal(c, want, n, "consumers of INGEST")
		}, 10*time.Second, 20*time.Millisecond)
	}
	consumers(3)
	consumers(0)
	require.Equal(t, 1.0, testutil.ToFloat64(p.m.heldBack))
	n, err := streamMsgs(t.Context(), js, streams.Events)
	require.NoError(t, err)
	require.Zero(t, n)

	catchUp(t, js, p, inputs)
	// Each made again by the worker whose fetch found it gone. (With a
	// tenant_idle this short, a consumer gone idle after the drain may be
	// made again too: the tenants are counted, not the lines.)
	recreated := map[string]bool{}
	for _, e := range logs.FilterMessage("consumer recreated").All() {
		require.Equal(t, "gone", e.ContextMap()["why"])
		recreated[e.ContextMap()["tenant"].(string)] = true
	}
	require.Equal(t, map[string]bool{"tenant0": true, "tenant1": true, "tenant2": true}, recreated)
}

// TestGateOffIgnoresBatches: with max_batches_backlog 0 (the default) a
// full BATCHES holds nothing back.
func TestGateOffIgnoresBatches(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	fillBatches(t, js, 10)
	inputs := publishInputs(t, js, 30, 20)
	cfg := testConfig(ns.ClientURL())
	require.Zero(t, cfg.MaxBatchesBacklog, "off by default")
	cfg.Shards = testShards
	p := start(t, cfg)
	waitDrained(t, js)
	perShard := requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 30 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, perShard, eventsMetric(p))
	require.Equal(t, 0.0, testutil.ToFloat64(p.m.heldBack))
	require.Equal(t, 0.0, testutil.ToFloat64(p.m.heldBackSeconds))
}

// TestStartedBesideFullBatchesFetchesNothing: the gate reads BATCHES
// before the workers start, so the tenants' backlogs (2 messages each,
// turns of 1) wait.
func TestStartedBesideFullBatchesFetchesNothing(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	fillBatches(t, js, 2)
	inputs := publishInputs(t, js, 6, 10)
	cfg := testConfig(ns.ClientURL())
	cfg.MaxBatchesBacklog = 1
	cfg.FetchBatch = 1
	logger, logs := observed(t)
	p := startWith(t, cfg, logger)
	waitPartitioning(t, logs)
	require.Equal(t, 1.0, testutil.ToFloat64(p.m.heldBack), "held before the first fetch")
	require.Never(t, func() bool {
		n, err := streamMsgs(t.Context(), js, streams.Events)
		return err != nil || n > 0
	}, 500*time.Millisecond, 50*time.Millisecond, "EVENTS got messages while held back")
	// One batch acked by a sink: at the bound, not above it.
	b, err := js.Stream(t.Context(), streams.Batches)
	require.NoError(t, err)
	require.NoError(t, b.Purge(t.Context(), jetstream.WithPurgeKeep(1)))
	waitDrained(t, js)
	requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Equal(t, 0.0, testutil.ToFloat64(p.m.heldBack))
}

// gateService is a Service with what the gate uses of it.
func gateService(t *testing.T) *Service {
	ws := liveness.NewWatchdogs("partitioner", time.Minute, nopReadiness{}, zaptest.NewLogger(t), prometheus.NewRegistry())
	return &Service{logger: zaptest.NewLogger(t), m: newMetrics(prometheus.NewRegistry(), 1), wd: ws.For("input")}
}

type nopReadiness struct{}

func (nopReadiness) Ready(string)            {}
func (nopReadiness) NotReady(string, string) {}

// TestFailedReadOpensTheGate: a monitoring failure never holds the
// pipeline; a waiting worker goes on at once.
func TestFailedReadOpensTheGate(t *testing.T) {
	s := gateService(t)
	g := newGate(s, 2)
	read := func(n uint64, err error) batchesReader {
		return func(context.Context) (uint64, error) { return n, err }
	}
	g.poll(t.Context(), read(3, nil))
	require.True(t, g.held.Load())
	require.Zero(t, g.openFor())
	released := g.released()
	require.True(t, g.holding())
	g.poll(t.Context(), read(0, errors.New("no responders")))
	select {
	case <-released:
	default:
		t.Fatal("the hold was not released")
	}
	require.False(t, g.held.Load())
	require.False(t, g.holding())
	require.Equal(t, 0.0, testutil.ToFloat64(s.m.heldBack))

	g.poll(t.Context(), read(2, nil))
	require.False(t, g.held.Load(), "at the bound: open")
	g.poll(t.Context(), read(3, nil))
	require.True(t, g.held.Load())
}

func TestBatchesBound(t *testing.T) {
	cfg := DefaultConfig()
	require.Zero(t, cfg.MaxBatchesBacklog)
	require.NoError(t, cfg.Validate())
	require.False(t, newGate(&Service{}, cfg.batchesBound()).on(), "off by default")
	cfg.MaxBatchesBacklog = 7
	require.Equal(t, 7, cfg.batchesBound())
	require.True(t, newGate(&Service{}, cfg.batchesBound()).on())
	cfg.MaxBatchesBacklog = -1
	require.ErrorContains(t, cfg.Validate(), "max_batches_backlog must be 0 (off) or positive, got -1")
}
