package batcher

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestMain(m *testing.M) {
	// Trace context must cross NATS headers in these tests.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	goleak.VerifyTestMain(m)
}

func testConfig(url string, shards int, p batch.Policy) Config {
	cfg := DefaultConfig()
	cfg.NATS.URL = url
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Shards = shards
	cfg.Policy = p
	cfg.PublishTimeout = 2 * time.Second
	cfg.ShutdownTimeout = 5 * time.Second
	cfg.PurgeDelay = 0 // purge at once; TestPurgeWaitsForTheDuplicateWindow covers the delay
	return cfg
}

// running is a batcher run by a test.
type running struct {
	*Service
	stop func() // cancels Run and requires it to return nil; idempotent
}

func start(t *testing.T, cfg Config, tp trace.TracerProvider) running {
	t.Helper()
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	s, err := New(cfg, service.Deps{
		Logger:         zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Registry:       prometheus.NewRegistry(),
		TracerProvider: tp,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("batcher did not stop")
		}
	}
	t.Cleanup(stop)
	return running{Service: s, stop: stop}
}

// published is one EVENTS message the test wrote.
type published struct {
	seq    uint64
	events []event.Event
}

// msgCounter numbers the test messages; loads of several shards share it.
var msgCounter atomic.Int64

// publishEvents writes n messages of rows events each to shard k.
func publishEvents(t *testing.T, js jetstream.JetStream, k, n, rows int, header func(nats.Header)) []published {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out := make([]published, 0, n)
	for range n {
		msg, events := newMessage(k, rows)
		if header != nil {
			header(msg.Header)
		}
		ack, err := js.PublishMsg(ctx, msg)
		require.NoError(t, err)
		out = append(out, published{seq: ack.Sequence, events: events})
	}
	return out
}

// newMessage is the next test message of shard k: rows events with ids
// unique in the test binary.
func newMessage(k, rows int) (*nats.Msg, []event.Event) {
	now := time.UnixMicro(1_700_000_000_000_000).UTC()
	n := int(msgCounter.Add(1))
	events := make([]event.Event, rows)
	for j := range events {
		events[j] = event.Event{
			EventID:    fmt.Sprintf("m%06d-e%03d", n, j),
			Tenant:     "acme",
			UserID:     "u" + strconv.Itoa(j),
			Type:       "view",
			TS:         now.Add(time.Duration(n*1000+j) * time.Microsecond),
			ReceivedAt: now,
			Properties: `{"k":"ü"}`,
		}
	}
	return &nats.Msg{Subject: streams.EventsSubject(k), Data: event.AppendEncoded(nil, events), Header: nats.Header{}}, events
}

type batchMsg struct {
	header nats.Header
	b      *batch.Batch
}

// readBatches returns the batches of shard k in BATCHES, in order.
func readBatches(t *testing.T, js jetstream.JetStream, k int) []batchMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streams.Batches)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	var out []batchMsg
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted by the test
		}
		if raw.Subject != streams.BatchesSubject(k) {
			continue
		}
		b, err := batch.Decode(raw.Data)
		require.NoError(t, err)
		out = append(out, batchMsg{header: raw.Header, b: b})
	}
	return out
}

// requireCoverage checks that the batches hold exactly the messages of
// want, once each, in order, as contiguous whole-message ranges, with
// consistent ids and headers; it returns the rows of each batch.
func requireCoverage(t *testing.T, k int, batches []batchMsg, want []published) []int {
	t.Helper()
	var rows []int
	i := 0 // next message of want
	for _, bm := range batches {
		b := bm.b
		id := fmt.Sprintf("%d:%d-%d", k, b.FirstSeq, b.LastSeq)
		require.Equal(t, k, b.Shard)
		require.Equal(t, id, bm.header.Get(jetstream.MsgIDHeader))
		require.Equal(t, id, bm.header.Get(streams.HeaderBatchID))
		require.Equal(t, strconv.FormatUint(b.FirstSeq, 10), bm.header.Get(streams.HeaderFirstSeq))
		require.Equal(t, strconv.FormatUint(b.LastSeq, 10), bm.header.Get(streams.HeaderLastSeq))
		require.Equal(t, strconv.Itoa(b.Len()), bm.header.Get(streams.HeaderRows))
		require.Less(t, i, len(want), "batch %s beyond the published messages", id)
		require.Equal(t, want[i].seq, b.FirstSeq, "batch %s does not start where the last ended", id)
		row := 0
		for i < len(want) && want[i].seq <= b.LastSeq {
			for _, e := range want[i].events {
				require.Equal(t, want[i].seq, b.Seq[row])
				require.Equal(t, e.EventID, b.EventID[row])
				require.Equal(t, e.Properties, b.Properties[row])
				require.Equal(t, e.TS.UnixMicro(), b.TS[row])
				row++
			}
			i++
		}
		require.Equal(t, want[i-1].seq, b.LastSeq, "batch %s ends inside a gap", id)
		require.Equal(t, row, b.Len(), "batch %s", id)
		rows = append(rows, b.Len())
	}
	require.Equal(t, len(want), i, "messages left out of every batch")
	return rows
}

// eventsIn counts the EVENTS messages of subject.
func eventsIn(ctx context.Context, js jetstream.JetStream, subject string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streams.Events)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, err
	}
	return info.State.Subjects[subject], nil
}

func subjectMsgs(t *testing.T, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	n, err := eventsIn(t.Context(), js, subject)
	require.NoError(t, err)
	return n
}

// assertSubjectMsgs is subjectMsgs for an EventuallyWithT condition.
func assertSubjectMsgs(ctx context.Context, c *assert.CollectT, js jetstream.JetStream, subject string, want uint64) {
	n, err := eventsIn(ctx, js, subject)
	if assert.NoError(c, err) {
		assert.Equal(c, want, n)
	}
}

func cuts(s *Service, k int, reason batch.CutReason) int {
	return int(testutil.ToFloat64(s.m.cuts.WithLabelValues(strconv.Itoa(k), string(reason))))
}

// assertPublishedAndTookAll asserts that shard k published n batches and
// has read every EVENTS message there was, as of its last read. Pending
// is zero before the first read too; the batch count rules that out.
func assertPublishedAndTookAll(c *assert.CollectT, s *Service, k, n int) {
	assert.Equal(c, n, counter(s.m.batches, k))
	assert.Zero(c, testutil.ToFloat64(s.m.pending.WithLabelValues(strconv.Itoa(k))))
}

func counter(v *prometheus.CounterVec, k int) int {
	return int(testutil.ToFloat64(v.WithLabelValues(strconv.Itoa(k))))
}

func TestBatchesCoverEveryMessageOnce(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	const shards = 4
	owned := []int{0, 1, 3}
	want := make(map[int][]published)
	for k := range shards {
		want[k] = publishEvents(t, js, k, 25, 10, nil)
	}
	cfg := testConfig(ns.ClientURL(), shards, batch.Policy{MaxRows: 100, MaxBytes: 1 << 20, MaxAge: 200 * time.Millisecond})
	cfg.Owned = owned
	b := start(t, cfg, nil)

	for _, k := range owned {
		// 250 rows: two batches full by rows, the last 50 cut by age.
		require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, 3, counter(b.m.batches, k)) }, 10*time.Second, 10*time.Millisecond)
		require.Equal(t, []int{100, 100, 50}, requireCoverage(t, k, readBatches(t, js, k), want[k]))
		require.Equal(t, 2, cuts(b.Service, k, batch.CutRows))
		require.Equal(t, 1, cuts(b.Service, k, batch.CutAge))
		require.Equal(t, 0, cuts(b.Service, k, batch.CutBytes))
		require.Equal(t, 250, counter(b.m.rows, k))
		require.Equal(t, 0.0, testutil.ToFloat64(b.m.pending.WithLabelValues(strconv.Itoa(k))))
		require.Equal(t, uint64(0), subjectMsgs(t, js, streams.EventsSubject(k)), "EVENTS purged below the published batches")
	}
	require.Empty(t, readBatches(t, js, 2), "shard 2 is not owned")
	require.Equal(t, uint64(25), subjectMsgs(t, js, streams.EventsSubject(2)))
	require.Equal(t, 0, counter(b.m.publishRetries, 0))
}

func TestCutsByBytesBeforeAMessageThatDoesNotFit(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	// Each message is 8 events of 48 bytes (Size): 384 bytes. Two fit
	// in 1024 bytes, the third does not and starts the next batch.
	want := publishEvents(t, js, 0, 8, 8, nil)
	require.Equal(t, 48, want[0].events[0].Size())
	b := start(t, testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 1000, MaxBytes: 1024, MaxAge: time.Hour}), nil)
	// Three batches are cut when the seventh message arrives; the eighth
	// must be taken too (nothing left pending) before the stop, or it
	// stays in EVENTS for the next owner rather than in the last batch.
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertPublishedAndTookAll(c, b.Service, 0, 3) }, 10*time.Second, 10*time.Millisecond)
	b.stop()
	require.Equal(t, []int{16, 16, 16, 16}, requireCoverage(t, 0, readBatches(t, js, 0), want))
	require.Equal(t, 3, cuts(b.Service, 0, batch.CutBytes))
	require.Equal(t, 1, cuts(b.Service, 0, batch.CutShutdown))
	require.Equal(t, 0, cuts(b.Service, 0, batch.CutRows))
}

func TestRestartResumesAfterTheLastBatch(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: time.Hour})

	want := publishEvents(t, js, 0, 23, 10, nil)
	first := start(t, cfg, nil)
	// Every message must be taken before the stop, or the last ones stay
	// in EVENTS rather than in the partial batch.
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertPublishedAndTookAll(c, first.Service, 0, 4) }, 10*time.Second, 10*time.Millisecond)
	// The shutdown publishes the partial batch of 30 rows.
	first.stop()
	require.Equal(t, 1, cuts(first.Service, 0, batch.CutShutdown))
	require.Equal(t, []int{50, 50, 50, 50, 30}, requireCoverage(t, 0, readBatches(t, js, 0), want))
	require.Equal(t, uint64(0), subjectMsgs(t, js, streams.EventsSubject(0)))

	want = append(want, publishEvents(t, js, 0, 17, 10, nil)...)
	second := start(t, cfg, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertPublishedAndTookAll(c, second.Service, 0, 3) }, 10*time.Second, 10*time.Millisecond)
	second.stop()
	require.Equal(t, []int{50, 50, 50, 50, 30, 50, 50, 50, 20}, requireCoverage(t, 0, readBatches(t, js, 0), want))
	require.Equal(t, 1, cuts(second.Service, 0, batch.CutShutdown))
	require.Equal(t, uint64(0), subjectMsgs(t, js, streams.EventsSubject(0)))
}

func TestRestartAfterBatchesWereConsumed(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: time.Hour})

	publishEvents(t, js, 0, 10, 10, nil)
	first := start(t, cfg, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, 2, counter(first.m.batches, 0)) }, 10*time.Second, 10*time.Millisecond)
	first.stop()

	// The sink consumed every batch; EVENTS was purged below them.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streams.Batches)
	require.NoError(t, err)
	require.NoError(t, st.Purge(ctx))

	want := publishEvents(t, js, 0, 5, 10, nil)
	cfg.Policy.MaxAge = 100 * time.Millisecond
	second := start(t, cfg, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, 1, counter(second.m.batches, 0)) }, 10*time.Second, 10*time.Millisecond)
	second.stop()
	require.Equal(t, []int{50}, requireCoverage(t, 0, readBatches(t, js, 0), want))
	require.Equal(t, uint64(0), subjectMsgs(t, js, streams.EventsSubject(0)))
}

// TestPurgeWaitsForTheDuplicateWindow shows why EVENTS keeps batched
// messages for PurgeDelay: JetStream rebuilds its duplicate map after a
// restart only from stored messages, so a partitioner republishing a group
// after a NATS restart (its INGEST ack lost) is dropped as a duplicate only
// while the first copy is kept.
func TestPurgeWaitsForTheDuplicateWindow(t *testing.T) {
	store := t.TempDir()
	ns, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: store})
	require.NoError(t, err)
	port := ns.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	url := ns.ClientURL()
	js := natstest.JetStream(t, url)
	cfg := testConfig(url, 2, batch.Policy{MaxRows: 10, MaxBytes: 1 << 20, MaxAge: time.Hour})
	cfg.PurgeDelay = 2 * time.Second

	publishGroup := func(id string, k int) *jetstream.PubAck {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		events := []event.Event{{EventID: id, Tenant: "t", UserID: "u", Type: "a", TS: time.Now().UTC(), ReceivedAt: time.Now().UTC()}}
		ack, err := js.PublishMsg(ctx, &nats.Msg{
			Subject: streams.EventsSubject(k),
			Data:    event.AppendEncoded(nil, events),
			Header:  nats.Header{jetstream.MsgIDHeader: []string{id}},
		})
		require.NoError(t, err)
		return ack
	}
	// Shard 0 with the delay; shard 1 by a batcher that purges at once.
	for i := range 10 {
		publishGroup(fmt.Sprintf("%d:0", i+1), 0)
		publishGroup(fmt.Sprintf("%d:1", i+1), 1)
	}
	cfg.Owned = []int{0}
	delayed := start(t, cfg, nil)
	now := cfg
	now.Owned, now.PurgeDelay = []int{1}, 0
	immediate := start(t, now, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 1, counter(delayed.m.batches, 0))
		assert.Equal(c, 1, counter(immediate.m.batches, 1))
	}, 10*time.Second, 10*time.Millisecond)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertSubjectMsgs(t.Context(), c, js, streams.EventsSubject(1), 0) }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, uint64(10), subjectMsgs(t, js, streams.EventsSubject(0)), "batched, kept for the delay")
	delayed.stop()
	immediate.stop()

	// NATS restarts on the same store: the duplicate map is rebuilt.
	ns.Shutdown()
	ns.WaitForShutdown()
	ns, err = natsserver.Start(natsserver.Options{Port: port, StoreDir: store})
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := js.Stream(ctx, streams.Events)
		assert.NoError(c, err)
	}, 10*time.Second, 50*time.Millisecond)

	require.True(t, publishGroup("3:0", 0).Duplicate, "kept message: its republished group is dropped")
	require.False(t, publishGroup("3:1", 1).Duplicate, "purged message: its republished group slips in again")

	// The delayed purge still happens, after the delay, without new events.
	cfg.Owned = []int{0}
	again := start(t, cfg, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertSubjectMsgs(t.Context(), c, js, streams.EventsSubject(0), 0) }, 10*time.Second, 50*time.Millisecond)
	again.stop()
}

func TestCorruptMessageIsDeadLetteredAndSkipped(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	want := publishEvents(t, js, 0, 3, 5, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	garbage := []byte{1, 200, 1, 2}
	ack, err := js.Publish(ctx, streams.EventsSubject(0), garbage)
	require.NoError(t, err)
	want = append(want, publishEvents(t, js, 0, 3, 5, nil)...)

	b := start(t, testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 1000, MaxBytes: 1 << 20, MaxAge: 100 * time.Millisecond}), nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, 30, counter(b.m.rows, 0)) }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 1, counter(b.m.deadLetters, 0))

	batches := readBatches(t, js, 0)
	require.Len(t, batches, 1)
	require.Equal(t, []int{30}, requireCoverage(t, 0, []batchMsg{{header: batches[0].header, b: batches[0].b}}, want))

	dl, err := js.Stream(ctx, streams.DeadLetter)
	require.NoError(t, err)
	raw, err := dl.GetLastMsgForSubject(ctx, streams.DeadLetterSubject("batcher", 0))
	require.NoError(t, err)
	require.Equal(t, garbage, raw.Data)
	require.Equal(t, streams.EventsSubject(0), raw.Header.Get(streams.HeaderSource))
	require.Equal(t, strconv.FormatUint(ack.Sequence, 10), raw.Header.Get(streams.HeaderSourceSeq))
	require.Contains(t, raw.Header.Get(streams.HeaderReason), event.ErrCorrupt.Error())
	require.Equal(t, "batcher:"+streams.EventsSubject(0)+":"+strconv.FormatUint(ack.Sequence, 10), raw.Header.Get(jetstream.MsgIDHeader))
}

func TestBatchSpanLinksItsMessages(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { require.NoError(t, tp.Shutdown(context.Background())) })

	// Six messages, each sent under its own span.
	var sent []trace.SpanContext
	var want []published
	for range 6 {
		ctx, span := tp.Tracer("test").Start(context.Background(), "partition")
		sent = append(sent, span.SpanContext())
		want = append(want, publishEvents(t, js, 0, 1, 3, func(h nats.Header) { telemetry.Inject(ctx, h) })...)
		span.End()
	}
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 1000, MaxBytes: 1 << 20, MaxAge: 300 * time.Millisecond})
	cfg.MaxLinks = 4
	b := start(t, cfg, tp)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, 1, counter(b.m.batches, 0)) }, 10*time.Second, 10*time.Millisecond)
	b.stop()

	batches := readBatches(t, js, 0)
	requireCoverage(t, 0, batches, want)
	var batchSpan sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "batch" {
			batchSpan = s
		}
	}
	require.NotNil(t, batchSpan)
	var linked, wantLinked []string
	for _, l := range batchSpan.Links() {
		linked = append(linked, l.SpanContext.TraceID().String()+"/"+l.SpanContext.SpanID().String())
	}
	for _, sc := range sent[:4] {
		wantLinked = append(wantLinked, sc.TraceID().String()+"/"+sc.SpanID().String())
	}
	require.Equal(t, wantLinked, linked, "links capped at MaxLinks, in message order")
	got := telemetry.Extract(context.Background(), batches[0].header)
	require.Equal(t, batchSpan.SpanContext().TraceID(), trace.SpanContextFromContext(got).TraceID())
	require.Equal(t, batchSpan.SpanContext().SpanID(), trace.SpanContextFromContext(got).SpanID())
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := DefaultConfig()
	require.NoError(t, cfg.Validate())
	cfg.Shards = 4
	cfg.Owned = []int{1, 4, 1}
	cfg.Policy.MaxRows = 0
	cfg.PublishTimeout = 0
	cfg.StallTimeout = -time.Second
	cfg.MaxLinks = -1
	cfg.Retry.Multiplier = 0
	err := cfg.Validate()
	require.Error(t, err)
	for _, want := range []string{
		"owned_shards: shard 4 is not in [0, 4)", "owned_shards: shard 1 is listed twice",
		"batch: max_rows", "retry: multiplier", "publish_timeout must", "max_links must",
		"stall_timeout must be positive, got -1s",
	} {
		require.Contains(t, err.Error(), want)
	}
	require.Equal(t, []int{0, 1, 2, 3}, Config{Ownership: shard.Ownership{Shards: 4}}.OwnedShards())
	require.True(t, strings.HasSuffix(DefaultConfig().Admin.Addr, ":8083"))
}

func TestNewReportsMissingDeps(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Admin.Addr = "127.0.0.1:0"
	_, err := New(cfg, service.Deps{})
	require.ErrorContains(t, err, "logger is required")
}

func TestConfigKeys(t *testing.T) {
	vars := config.EnvVars(&Config{})
	for _, want := range []string{"SURGE_SHARDS=", "SURGE_OWNED_SHARDS=", "SURGE_OWNERSHIP=", "SURGE_LEASE_TTL=", "SURGE_RETRY_INITIAL=", "SURGE_RETRY_MAX=", "SURGE_STALL_TIMEOUT="} {
		require.True(t, slices.ContainsFunc(vars, func(v string) bool { return strings.HasPrefix(v, want) }), "%s in %v", want, vars)
	}
	cfg := DefaultConfig()
	require.NoError(t, config.ApplyEnv(&cfg, func(k string) (string, bool) {
		v, ok := map[string]string{"SURGE_OWNED_SHARDS": "2,5", "SURGE_RETRY_MAX": "3s", "SURGE_STALL_TIMEOUT": "45s", "SURGE_LEASE_TTL": "4s"}[k]
		return v, ok
	}))
	require.Equal(t, shard.ModeStatic, cfg.Mode, "static by default")
	require.Equal(t, 4*time.Second, cfg.LeaseTTL)
	leased := cfg
	leased.Mode = shard.ModeLease
	require.ErrorContains(t, leased.Validate(), "owned_shards applies to static ownership only")
	require.Equal(t, []int{2, 5}, cfg.OwnedShards())
	require.Equal(t, 45*time.Second, cfg.StallTimeout)
	require.Equal(t, 30*time.Second, DefaultConfig().StallTimeout)
	cfg.StallTimeout = 0
	require.ErrorContains(t, cfg.Validate(), "stall_timeout must be positive, got 0s")
	require.Equal(t, 3*time.Second, cfg.Retry.Max)
	require.Equal(t, 10*time.Second, DefaultConfig().Retry.Max, "the cap of the waits")
}

// TestConsumerRestartsBackOffUntilProgress checks the pacing of a shard's
// consumer re-creation: the waits grow while the consumer fails without
// taking a message, up to Retry.Max, and start over once it took one.
func TestConsumerRestartsBackOffUntilProgress(t *testing.T) {
	r := newRestarts(retry.Config{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2})
	var waits []time.Duration
	for range 6 {
		waits = append(waits, r.wait(false))
	}
	ms := time.Millisecond
	require.Equal(t, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second}, waits)
	require.Equal(t, 100*ms, r.wait(true), "a consumer that made progress starts a new episode")
	require.Equal(t, 200*ms, r.wait(false))
	require.Equal(t, 100*ms, r.wait(true))
	require.Equal(t, 100*ms, r.wait(true), "each failure after progress waits the shortest")
}

// TestBatchSpanFollowsSampling checks the batch span's sampling rule: a
// batch holding a sampled message is recorded as a child of the first
// sampled message's span, linking only sampled messages; a batch of only
// unsampled messages records nothing and passes the unsampled flag on.
func TestBatchSpanFollowsSampling(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)) // parent-based always-on
	t.Cleanup(func() { require.NoError(t, tp.Shutdown(context.Background())) })

	spanContext := func(sampled bool) trace.SpanContext {
		var tid trace.TraceID
		var sid trace.SpanID
		_, _ = rand.Read(tid[:])
		_, _ = rand.Read(sid[:])
		flags := trace.TraceFlags(0)
		if sampled {
			flags = trace.FlagsSampled
		}
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags, Remote: true})
	}
	send := func(shard int, sc trace.SpanContext) []published {
		ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
		return publishEvents(t, js, shard, 1, 2, func(h nats.Header) { telemetry.Inject(ctx, h) })
	}
	// Shard 0: unsampled, sampled, unsampled, sampled. Shard 1: unsampled only.
	mixed := []trace.SpanContext{spanContext(false), spanContext(true), spanContext(false), spanContext(true)}
	for _, sc := range mixed {
		send(0, sc)
	}
	unsampled := spanContext(false)
	send(1, unsampled)
	send(1, spanContext(false))

	cfg := testConfig(ns.ClientURL(), 2, batch.Policy{MaxRows: 1000, MaxBytes: 1 << 20, MaxAge: 200 * time.Millisecond})
	b := start(t, cfg, tp)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 1, counter(b.m.batches, 0))
		assert.Equal(c, 1, counter(b.m.batches, 1))
	}, 10*time.Second, 10*time.Millisecond)
	b.stop()

	var spans []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "batch" {
			spans = append(spans, s)
		}
	}
	require.Len(t, spans, 1, "only the batch holding sampled messages is recorded")
	s := spans[0]
	require.Equal(t, mixed[1].TraceID(), s.SpanContext().TraceID(), "in the trace of the first sampled message")
	require.Equal(t, mixed[1].SpanID(), s.Parent().SpanID())
	var linked []trace.SpanContext
	for _, l := range s.Links() {
		linked = append(linked, l.SpanContext)
	}
	require.Equal(t, []trace.SpanContext{mixed[1], mixed[3]}, linked, "links to sampled messages only")

	header := readBatches(t, js, 1)[0].header
	sc := trace.SpanContextFromContext(telemetry.Extract(context.Background(), header))
	require.Equal(t, unsampled.TraceID(), sc.TraceID(), "an unsampled batch carries its first message's trace")
	require.False(t, sc.IsSampled())
}
