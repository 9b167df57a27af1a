package partitioner

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testShards = 8

func testConfig(url string) Config {
	cfg := DefaultConfig()
	cfg.NATS.URL = url
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Shards = testShards
	cfg.FetchMaxWait = 100 * time.Millisecond
	cfg.PublishTimeout = 2 * time.Second
	cfg.InfoInterval = 100 * time.Millisecond
	return cfg
}

// start runs a partitioner until the test ends; Run must return nil.
func start(t *testing.T, cfg Config) *Service {
	t.Helper()
	return startWith(t, cfg, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
}

// startWith is start with the given logger.
func startWith(t *testing.T, cfg Config, logger *zap.Logger) *Service {
	t.Helper()
	s, err := New(cfg, service.Deps{
		Logger:         logger,
		Registry:       prometheus.NewRegistry(),
		TracerProvider: noop.NewTracerProvider(),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("partitioner did not stop")
		}
	})
	return s
}

// ingestReq is one INGEST request the test published.
type ingestReq struct {
	seq    uint64
	events []event.Event
}

// publishInputs publishes n requests of perInput events over many users.
func publishInputs(t *testing.T, js jetstream.JetStream, n, perInput int) map[uint64]ingestReq {
	t.Helper()
	return publishInputsFrom(t, js, 0, n, perInput)
}

// publishInputsFrom publishes inputs first to first+n-1 as publishInputs
// does inputs 0 to n-1, so that waves of them keep every event id apart.
func publishInputsFrom(t *testing.T, js jetstream.JetStream, first, n, perInput int) map[uint64]ingestReq {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.UnixMicro(1_700_000_000_000_000).UTC()
	out := make(map[uint64]ingestReq, n)
	for i := first; i < first+n; i++ {
		tenant := "tenant" + strconv.Itoa(i%3)
		events := make([]event.Event, perInput)
		for j := range events {
			events[j] = event.Event{
				EventID:    fmt.Sprintf("e-%d-%d", i, j),
				Tenant:     tenant,
				UserID:     "user" + strconv.Itoa((i*perInput+j*7)%997),
				Type:       "click",
				TS:         now.Add(time.Duration(j) * time.Microsecond),
				ReceivedAt: now,
				Properties: `{"i":` + strconv.Itoa(j) + `}`,
			}
		}
		ack, err := js.Publish(ctx, streams.IngestSubject(tenant), event.AppendEncoded(nil, events))
		require.NoError(t, err)
		out[ack.Sequence] = ingestReq{seq: ack.Sequence, events: events}
	}
	return out
}

// waitDrained waits until INGEST holds nothing and no consumer has
// anything pending or unacked.
func waitDrained(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	drained := assert.EventuallyWithT(t, func(c *assert.CollectT) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, streams.Ingest)
		if !assert.NoError(c, err) {
			return
		}
		info, err := st.Info(ctx)
		if !assert.NoError(c, err) {
			return
		}
		assert.Zero(c, info.State.Msgs, "INGEST messages")
		lister := st.ListConsumers(ctx)
		for ci := range lister.Info() {
			assert.Zero(c, ci.NumPending, "pending of %s", ci.Name)
			assert.Zero(c, ci.NumAckPending, "ack pending of %s", ci.Name)
		}
		assert.NoError(c, lister.Err())
	}, 30*time.Second, 20*time.Millisecond)
	if !drained {
		t.FailNow()
	}
}

type eventsMsg struct {
	subject string
	msgID   string
	rows    string
	events  []event.Event
}

// readEvents returns every message of EVENTS.
func readEvents(t *testing.T, js jetstream.JetStream) []eventsMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streams.Events)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	var out []eventsMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		require.NoError(t, err)
		events, err := event.Decode(raw.Data)
		require.NoError(t, err)
		out = append(out, eventsMsg{
			subject: raw.Subject,
			msgID:   raw.Header.Get(jetstream.MsgIDHeader),
			rows:    raw.Header.Get(streams.HeaderRows),
			events:  events,
		})
	}
	require.Len(t, out, int(info.State.Msgs))
	return out
}

// requireExactlyOnce checks that EVENTS holds every input's events once,
// each on the subject of its shard, in input order within a group, and
// returns the number of events per shard.
func requireExactlyOnce(t *testing.T, inputs map[uint64]ingestReq, got []eventsMsg) []int {
	t.Helper()
	perShard := make([]int, testShards)
	seen := make(map[string]bool)
	ids := make(map[string]bool)
	total := 0
	for _, m := range got {
		require.False(t, ids[m.msgID], "message id %s twice", m.msgID)
		ids[m.msgID] = true
		seqText, kText, ok := strings.Cut(m.msgID, ":")
		require.True(t, ok, m.msgID)
		seq, err := strconv.ParseUint(seqText, 10, 64)
		require.NoError(t, err)
		k, err := strconv.Atoi(kText)
		require.NoError(t, err)
		require.Equal(t, streams.EventsSubject(k), m.subject)
		require.Equal(t, strconv.Itoa(len(m.events)), m.rows)

		in, ok := inputs[seq]
		require.True(t, ok, "no input with seq %d", seq)
		var want []event.Event
		for _, e := range in.events {
			if shard.Of(e.Tenant, e.UserID, testShards) == k {
				want = append(want, e)
			}
		}
		require.Equal(t, want, m.events, "group %s", m.msgID)
		for _, e := range m.events {
			require.False(t, seen[e.EventID], "event %s twice", e.EventID)
			seen[e.EventID] = true
		}
		perShard[k] += len(m.events)
		total += len(m.events)
	}
	want := 0
	for _, in := range inputs {
		want += len(in.events)
	}
	require.Equal(t, want, total)
	return perShard
}

func eventsMetric(s *Service) []int {
	out := make([]int, len(s.m.events))
	for k, c := range s.m.events {
		out[k] = int(testutil.ToFloat64(c))
	}
	return out
}

func messagesMetric(s *Service, outcome string) int {
	return int(testutil.ToFloat64(s.m.messages.WithLabelValues(outcome)))
}

func TestPartitionsEveryEventOnce(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	inputs := publishInputs(t, js, 60, 250)

	p := start(t, testConfig(ns.ClientURL()))
	waitDrained(t, js)

	perShard := requireExactlyOnce(t, inputs, readEvents(t, js))
	for k, n := range perShard {
		require.Positive(t, n, "shard %d got no events", k)
	}
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 60 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, perShard, eventsMetric(p))
	require.Equal(t, 0, messagesMetric(p, outcomeNaked))
	require.Equal(t, 0, messagesMetric(p, outcomeDeadLetter))
	require.Equal(t, 0.0, testutil.ToFloat64(p.m.deadLetters))
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(p.m.consumerPending) == 0 && testutil.ToFloat64(p.m.ackPending) == 0
	}, 5*time.Second, 20*time.Millisecond)
}

func TestRepublishedGroupsAreDropped(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	inputs := publishInputs(t, js, 5, 100)

	// A partitioner that published some groups of the first input and
	// died before its ack left them behind; the redelivered input
	// republishes them with the same ids.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first := inputs[1]
	groups := make(map[int][]event.Event)
	for _, e := range first.events {
		k := shard.Of(e.Tenant, e.UserID, testShards)
		groups[k] = append(groups[k], e)
	}
	left := 0
	for k, g := range groups {
		if left == 2 {
			break
		}
		msg := &nats.Msg{Subject: streams.EventsSubject(k), Data: event.AppendEncoded(nil, g), Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("1:%d", k))
		msg.Header.Set(streams.HeaderRows, strconv.Itoa(len(g)))
		_, err := js.PublishMsg(ctx, msg)
		require.NoError(t, err)
		left++
	}

	p := start(t, testConfig(ns.ClientURL()))
	waitDrained(t, js)
	perShard := requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 5 }, 5*time.Second, 10*time.Millisecond)
	// The metric counts what this partitioner published and acked,
	// duplicates dropped by the stream included.
	require.Equal(t, perShard, eventsMetric(p))
}

func TestFailedPublishIsRetriedWithoutDuplicates(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())
	logger, logs := observed(t)
	p := startWith(t, cfg, logger)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The partitioner has ensured the streams: EVENTS' update below stays.
	waitPartitioning(t, logs)

	// EVENTS refuses all but 3 messages: most publishes fail, inputs are
	// naked and redelivered, and the groups already stored are dropped as
	// duplicates on the retry.
	var eventsCfg jetstream.StreamConfig
	for _, sc := range streams.Definitions(cfg.Streams) {
		if sc.Name == streams.Events {
			eventsCfg = sc
		}
	}
	full := eventsCfg
	full.MaxMsgs = 3
	_, err := js.UpdateStream(ctx, full)
	require.NoError(t, err)

	inputs := publishInputs(t, js, 10, 100)
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeNaked) >= 10 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 0, messagesMetric(p, outcomeAcked))

	_, err = js.UpdateStream(ctx, eventsCfg)
	require.NoError(t, err)
	waitDrained(t, js)
	requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 10 }, 5*time.Second, 10*time.Millisecond)
}

func TestCorruptInputIsDeadLettered(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	garbage := []byte("this is not an event list")
	ack, err := js.Publish(ctx, streams.IngestSubject("bad"), garbage)
	require.NoError(t, err)
	inputs := publishInputs(t, js, 3, 50)

	p := start(t, testConfig(ns.ClientURL()))
	waitDrained(t, js)
	requireExactlyOnce(t, inputs, readEvents(t, js))

	dl, err := js.Stream(ctx, streams.DeadLetter)
	require.NoError(t, err)
	info, err := dl.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs)
	raw, err := dl.GetLastMsgForSubject(ctx, streams.DeadLetterSubject("partitioner", 0))
	require.NoError(t, err)
	require.Equal(t, garbage, raw.Data)
	require.Equal(t, streams.IngestSubject("bad"), raw.Header.Get(streams.HeaderSource))
	require.Equal(t, strconv.FormatUint(ack.Sequence, 10), raw.Header.Get(streams.HeaderSourceSeq))
	require.Contains(t, raw.Header.Get(streams.HeaderReason), event.ErrCorrupt.Error())
	require.Equal(t, "partitioner:"+streams.IngestSubject("bad")+":"+strconv.FormatUint(ack.Sequence, 10),
		raw.Header.Get(jetstream.MsgIDHeader), "a redelivery makes the same dead letter")

	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 3 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, 1, messagesMetric(p, outcomeDeadLetter))
	require.Equal(t, 1.0, testutil.ToFloat64(p.m.deadLetters))
}

func TestInstancesShareTheConsumer(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())
	cfg.FetchBatch = 8 // small fetches, so both instances get work
	cfg.Workers = 1
	a := start(t, cfg)
	b := start(t, cfg)
	// Waves of 200 inputs until both instances have worked on some: on a
	// busy machine one can drain a wave before the other has found the
	// tenants (within info_interval).
	inputs := map[uint64]ingestReq{}
	for wave := 0; messagesMetric(a, outcomeAcked) == 0 || messagesMetric(b, outcomeAcked) == 0; wave++ {
		require.Less(t, wave, 20, "an instance got no work in %d waves", wave)
		maps.Copy(inputs, publishInputsFrom(t, js, wave*200, 200, 40))
		waitDrained(t, js)
		require.Eventually(t, func() bool {
			return messagesMetric(a, outcomeAcked)+messagesMetric(b, outcomeAcked) == len(inputs)
		}, 5*time.Second, 10*time.Millisecond)
	}

	perShard := requireExactlyOnce(t, inputs, readEvents(t, js))
	sum := eventsMetric(a)
	for k, n := range eventsMetric(b) {
		sum[k] += n
	}
	require.Equal(t, perShard, sum)
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := DefaultConfig()
	require.NoError(t, cfg.Validate())
	cfg.Shards = 0
	cfg.Workers = 0
	cfg.FetchBatch = 0
	cfg.AckWait = 500 * time.Millisecond
	cfg.Admin.Addr = "nope"
	cfg.NATS.URL = ""
	cfg.Retry.Multiplier = 0.5
	err := cfg.Validate()
	require.Error(t, err)
	for _, want := range []string{"shards must", "workers must", "fetch_batch must", "ack_wait must", "admin: addr", "nats: url", "retry: multiplier"} {
		require.Contains(t, err.Error(), want)
	}
}

// TestAckWaitStaysInsideTheDedupWindow: a request whose ack was lost is
// republished after AckWait, and its groups are dropped only while EVENTS
// remembers their ids.
func TestAckWaitStaysInsideTheDedupWindow(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AckWait = cfg.Streams.DuplicateWindow
	require.ErrorContains(t, cfg.Validate(), "ack_wait must be below streams.duplicate_window (2m0s), got 2m0s")
	cfg.AckWait = cfg.Streams.DuplicateWindow - time.Second
	require.ErrorContains(t, cfg.Validate(), "let a request be republished 2m40s after its first publish")
	cfg.AckWait = cfg.Streams.DuplicateWindow - 2*cfg.holdTime() - time.Second
	require.NoError(t, cfg.Validate())
}
