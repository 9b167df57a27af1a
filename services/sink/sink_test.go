package sink_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
	"github.com/surge-events/surge/services/sink"
)

func TestMain(m *testing.M) {
	// What telemetry.SetupTracing installs in a service.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	goleak.VerifyTestMain(m)
}

// testEnv is an embedded JetStream server and two ClickHouse servers.
type testEnv struct {
	t  *testing.T
	ns interface{ ClientURL() string }
	js jetstream.JetStream
	ch *chserver.Cluster
	// conns query each ClickHouse server directly, in server order.
	conns []driver.Conn
}

func newEnv(t *testing.T) *testEnv {
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
	ch, err := chserver.StartCluster(ctx, t.TempDir(), 2)
	require.NoError(t, err)
	t.Cleanup(ch.Stop)

	e := &testEnv{t: t, ns: ns, js: js, ch: ch}
	for _, addr := range ch.Addrs() {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 5 * time.Second})
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		e.conns = append(e.conns, conn)
	}
	return e
}

func streamsConfig() streams.Config {
	c := streams.DefaultConfig()
	c.MaxBytes = 64 << 20
	return c
}

// config is a sink over the test servers with short timeouts.
func (e *testEnv) config(shards int) sink.Config {
	cfg := sink.DefaultConfig()
	cfg.NATS.URL = e.ns.ClientURL()
	cfg.Streams = streamsConfig()
	cfg.ClickHouse.Addrs = e.ch.Addrs()
	cfg.ClickHouse.DialTimeout = 2 * time.Second
	cfg.ClickHouse.InsertTimeout = 5 * time.Second
	cfg.Retry = retry.Config{Initial: 50 * time.Millisecond, Max: 400 * time.Millisecond, Multiplier: 2, RandomizationFactor: 0.2}
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Shards = shards
	return cfg
}

// runningSink is a sink started in the background.
type runningSink struct {
	svc  *sink.Service
	reg  *prometheus.Registry
	stop func()
}

// shard is the metric series of shard k.
func (r *runningSink) shard(k int) sink.Series { return r.svc.Series(k) }

// startSink runs a sink until stop (or the end of the test) and waits
// until it reports ready.
func (e *testEnv) startSink(cfg sink.Config, tp ...trace.TracerProvider) *runningSink {
	e.t.Helper()
	return e.startSinkWith(cfg, nil, tp...)
}

// startSinkWith is startSink with setup, when not nil, given the service
// before it runs.
func (e *testEnv) startSinkWith(cfg sink.Config, setup func(*sink.Service), tp ...trace.TracerProvider) *runningSink {
	t := e.t
	t.Helper()
	reg := prometheus.NewRegistry()
	deps := service.Deps{Logger: zaptest.NewLogger(t), Registry: reg, TracerProvider: noop.NewTracerProvider()}
	if len(tp) > 0 {
		deps.TracerProvider = tp[0]
	}
	s, err := sink.New(cfg, deps)
	require.NoError(t, err)
	if setup != nil {
		setup(s)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := client.Get("http://" + s.AdminAddr() + "/readyz")
		if !assert.NoError(c, err) {
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(c, http.StatusOK, resp.StatusCode, "readyz: %s", body)
	}, 30*time.Second, 20*time.Millisecond, "sink ready")
	return &runningSink{svc: s, reg: reg, stop: stop}
}

// eventID is deterministic, so the same EVENTS message always carries the
// same ids, whatever batch it ends up in.
func eventID(shard int, seq uint64, i int) string {
	return fmt.Sprintf("ev-%d-%06d-%03d", shard, seq, i)
}

// rowsPerMsg varies the number of events per EVENTS message.
func rowsPerMsg(seq uint64) int { return 1 + int(seq%3) }

func rowsIn(first, last uint64) int {
	n := 0
	for seq := first; seq <= last; seq++ {
		n += rowsPerMsg(seq)
	}
	return n
}

var baseTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func eventsOf(shard int, seq uint64) []event.Event {
	out := make([]event.Event, rowsPerMsg(seq))
	for i := range out {
		out[i] = event.Event{
			EventID:    eventID(shard, seq, i),
			Tenant:     "tenant-" + strconv.Itoa(i%2),
			UserID:     fmt.Sprintf("user-%d-%d", shard, i),
			Type:       "page_view",
			TS:         baseTime.Add(time.Duration(seq) * time.Second),
			ReceivedAt: baseTime.Add(time.Duration(seq)*time.Second + time.Minute),
			Properties: fmt.Sprintf(`{"seq":%d,"i":%d}`, seq, i),
		}
	}
	return out
}

// makeBatch builds the batch of EVENTS messages first..last of shard.
func makeBatch(shard int, first, last uint64) *batch.Batch {
	b := batch.NewBuilder(shard, batch.Policy{MaxRows: 1 << 20, MaxBytes: 1 << 30, MaxAge: time.Hour})
	for seq := first; seq <= last; seq++ {
		b.Add(seq, eventsOf(shard, seq), time.Now())
	}
	return b.Cut()
}

// publish sends b to BATCHES as the batcher does, with msgID as the
// Nats-Msg-Id (the batch id unless a test re-publishes on purpose).
func (e *testEnv) publish(b *batch.Batch, msgID string) {
	e.t.Helper()
	require.NoError(e.t, e.tryPublish(b, msgID))
}

// tryPublish is publish for goroutines other than the test's.
func (e *testEnv) tryPublish(b *batch.Batch, msgID string) error {
	msg := nats.NewMsg(streams.BatchesSubject(b.Shard))
	msg.Data = batch.Encode(b)
	msg.Header.Set(streams.HeaderBatchID, b.ID())
	msg.Header.Set(streams.HeaderFirstSeq, strconv.FormatUint(b.FirstSeq, 10))
	msg.Header.Set(streams.HeaderLastSeq, strconv.FormatUint(b.LastSeq, 10))
	msg.Header.Set(streams.HeaderRows, strconv.Itoa(b.Len()))
	return e.tryPublishMsg(msg, msgID)
}

func (e *testEnv) publishMsg(msg *nats.Msg, msgID string) {
	e.t.Helper()
	require.NoError(e.t, e.tryPublishMsg(msg, msgID))
}

func (e *testEnv) tryPublishMsg(msg *nats.Msg, msgID string) error {
	ctx, cancel := context.WithTimeout(e.t.Context(), 10*time.Second)
	defer cancel()
	ack, err := e.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
	if err != nil {
		return fmt.Errorf("publish %s: %w", msgID, err)
	}
	if ack.Duplicate {
		return fmt.Errorf("publish %s: dropped as a duplicate", msgID)
	}
	return nil
}

// count runs a query returning one UInt64 on server i.
func (e *testEnv) count(i int, query string, args ...any) uint64 {
	e.t.Helper()
	n, err := e.tryCount(i, query, args...)
	require.NoError(e.t, err)
	return n
}

// tryCount is count for conditions polled off the test goroutine.
func (e *testEnv) tryCount(i int, query string, args ...any) (uint64, error) {
	ctx, cancel := context.WithTimeout(e.t.Context(), 10*time.Second)
	defer cancel()
	var n uint64
	err := e.conns[i].QueryRow(ctx, query, args...).Scan(&n)
	return n, err
}

// waitRows waits until the Distributed table holds want rows.
func (e *testEnv) waitRows(want int) {
	e.t.Helper()
	require.EventuallyWithT(e.t, func(c *assert.CollectT) {
		n, err := e.tryCount(0, "SELECT count() FROM surge.events")
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(want), n)
		}
	}, 30*time.Second, 20*time.Millisecond, "want %d rows in surge.events", want)
}

// requireNoDuplicates checks every row's event id is distinct and there are want rows.
func (e *testEnv) requireNoDuplicates(want int) {
	e.t.Helper()
	require.Equal(e.t, uint64(want), e.count(0, "SELECT count() FROM surge.events"))
	require.Equal(e.t, uint64(want), e.count(0, "SELECT uniqExact(event_id) FROM surge.events"))
}

// value reads a counter or gauge series.
func value(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// samples is the number of observations of a histogram series.
func samples(t *testing.T, o prometheus.Observer) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, o.(prometheus.Metric).Write(&m))
	return float64(m.GetHistogram().GetSampleCount())
}

type row struct {
	EventID, Tenant, UserID, Type string
	TS, ReceivedAt                time.Time
	Properties                    string
	Shard                         uint16
	Seq                           uint64
}

func (e *testEnv) rowsOfShard(server, shard int) []row {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 10*time.Second)
	defer cancel()
	rows, err := e.conns[server].Query(ctx, "SELECT event_id, tenant, user_id, type, ts, received_at, properties, shard, seq FROM surge.events_local WHERE shard = ? ORDER BY seq, event_id", shard)
	require.NoError(e.t, err)
	defer rows.Close()
	var out []row
	for rows.Next() {
		var r row
		require.NoError(e.t, rows.Scan(&r.EventID, &r.Tenant, &r.UserID, &r.Type, &r.TS, &r.ReceivedAt, &r.Properties, &r.Shard, &r.Seq))
		r.TS, r.ReceivedAt = r.TS.UTC(), r.ReceivedAt.UTC()
		out = append(out, r)
	}
	require.NoError(e.t, rows.Err())
	return out
}

func expectedRows(shard int, first, last uint64) []row {
	var out []row
	for seq := first; seq <= last; seq++ {
		for _, ev := range eventsOf(shard, seq) {
			out = append(out, row{ev.EventID, ev.Tenant, ev.UserID, ev.Type, ev.TS, ev.ReceivedAt, ev.Properties, uint16(shard), seq})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}

func TestSinkLandsEachShardOnItsServer(t *testing.T) {
	e := newEnv(t)
	const shards = 4
	cfg := e.config(shards)
	cfg.ClickHouse.MaxInserts = 1 // each server's two shards take turns
	s := e.startSink(cfg)

	total := 0
	for k := 0; k < shards; k++ {
		for _, r := range [][2]uint64{{1, 3}, {4, 5 + uint64(k)}} {
			b := makeBatch(k, r[0], r[1])
			e.publish(b, b.ID())
			total += b.Len()
		}
	}
	e.waitRows(total)
	e.requireNoDuplicates(total)

	for k := 0; k < shards; k++ {
		last := 5 + uint64(k)
		server, other := k%2, 1-k%2
		require.Equal(t, expectedRows(k, 1, last), e.rowsOfShard(server, k), "shard %d on server %d", k, server)
		require.Zero(t, e.count(other, "SELECT count() FROM surge.events_local WHERE shard = ?", k), "shard %d not on server %d", k, other)

		require.Equal(t, 2.0, value(s.shard(k).Inserted))
		require.Equal(t, float64(rowsIn(1, last)), value(s.shard(k).Rows))
		require.Equal(t, float64(last), value(s.shard(k).Watermark))
		require.Equal(t, 2.0, samples(t, s.shard(k).InsertDuration))
		require.Zero(t, value(s.shard(k).Retries))
		require.Zero(t, value(s.shard(k).DeadLetters))
		require.Equal(t, 2.0, samples(t, s.shard(k).BatchRows))
		require.Equal(t, 2.0, samples(t, s.shard(k).BatchBytes))
	}
	require.Equal(t, float64(total), samples(t, s.svc.EndToEnd()))
	for _, addr := range e.ch.Addrs() {
		// Each shard reads which rows the server holds at the start of its
		// tenure, then inserts twice.
		require.Equal(t, 6.0, samples(t, s.svc.TurnWait(addr)), "three turns of each of the two shards on %s", addr)
	}

	// The registry exports them under their names and labels, every
	// outcome of every shard from the start.
	var want strings.Builder
	want.WriteString("# HELP surge_sink_batches_total Batches handled, by shard and outcome (inserted, duplicate, dead_letter).\n")
	want.WriteString("# TYPE surge_sink_batches_total counter\n")
	for k := range shards {
		fmt.Fprintf(&want, "surge_sink_batches_total{outcome=\"dead_letter\",shard=\"%d\"} 0\n", k)
		fmt.Fprintf(&want, "surge_sink_batches_total{outcome=\"duplicate\",shard=\"%d\"} 0\n", k)
		fmt.Fprintf(&want, "surge_sink_batches_total{outcome=\"inserted\",shard=\"%d\"} 2\n", k)
	}
	want.WriteString("# HELP surge_sink_watermark Highest EVENTS sequence held by ClickHouse, by shard.\n")
	want.WriteString("# TYPE surge_sink_watermark gauge\n")
	for k := range shards {
		fmt.Fprintf(&want, "surge_sink_watermark{shard=\"%d\"} %d\n", k, 5+k)
	}
	require.NoError(t, testutil.GatherAndCompare(s.reg, strings.NewReader(want.String()), "surge_sink_batches_total", "surge_sink_watermark"))
}

func TestSinkInsertsNothingTwice(t *testing.T) {
	e := newEnv(t)
	// Each batch landed, inserted or found there already, is announced
	// to the batcher with its last EVENTS sequence, in the shard's order.
	notices, err := e.js.Conn().SubscribeSync(streams.LandedSubject(0))
	require.NoError(t, err)
	s := e.startSink(e.config(2))

	first := makeBatch(0, 1, 4)
	e.publish(first, first.ID())
	e.waitRows(rowsIn(1, 4))

	overlap := makeBatch(0, 3, 6) // 3 and 4 are at or below the watermark
	e.publish(overlap, overlap.ID())
	e.publish(first, "again:"+first.ID()) // wholly at or below the watermark
	last := makeBatch(0, 7, 7)
	e.publish(last, last.ID())

	e.waitRows(rowsIn(1, 7))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 1.0, value(s.shard(0).Duplicates))
	}, 10*time.Second, 10*time.Millisecond)
	e.requireNoDuplicates(rowsIn(1, 7))
	require.Equal(t, expectedRows(0, 1, 7), e.rowsOfShard(0, 0))
	require.Equal(t, 3.0, value(s.shard(0).Inserted))
	require.Equal(t, float64(rowsIn(1, 7)), value(s.shard(0).Rows))
	require.Equal(t, 7.0, value(s.shard(0).Watermark))
	var landed []string
	for range 4 {
		m, err := notices.NextMsg(10 * time.Second)
		require.NoError(t, err)
		landed = append(landed, string(m.Data))
	}
	require.Equal(t, []string{"4", "6", "4", "7"}, landed)
}

func TestSinkRestartResumesFromWatermark(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(2)
	first := e.startSink(cfg)
	for k := 0; k < 2; k++ {
		b := makeBatch(k, 1, 5)
		e.publish(b, b.ID())
	}
	e.waitRows(2 * rowsIn(1, 5))
	first.stop()

	// While no sink runs: a batch overlapping shard 0's watermark, and a
	// repeat of shard 1's batch.
	overlap := makeBatch(0, 4, 8)
	e.publish(overlap, overlap.ID())
	repeat := makeBatch(1, 1, 5)
	e.publish(repeat, "again:"+repeat.ID())

	second := e.startSink(cfg)
	e.waitRows(rowsIn(1, 8) + rowsIn(1, 5))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 1.0, value(second.shard(1).Duplicates))
	}, 10*time.Second, 10*time.Millisecond)
	e.requireNoDuplicates(rowsIn(1, 8) + rowsIn(1, 5))

	// The new sink inserted only what was above the watermarks it read back.
	require.Equal(t, float64(rowsIn(6, 8)), value(second.shard(0).Rows))
	require.Zero(t, value(second.shard(1).Rows))
	require.Equal(t, 8.0, value(second.shard(0).Watermark))
	require.Equal(t, 5.0, value(second.shard(1).Watermark), "read back from ClickHouse")
}

func TestSinkDeadLettersBadBatches(t *testing.T) {
	e := newEnv(t)
	s := e.startSink(e.config(2))

	// Shard 1: bytes that are no batch at all.
	corrupt := nats.NewMsg(streams.BatchesSubject(1))
	corrupt.Data = []byte("definitely not a batch")
	corrupt.Header.Set(streams.HeaderBatchID, "1:1-2")
	e.publishMsg(corrupt, "1:1-2")
	// Shard 0: a well-formed batch whose timestamp no DateTime can hold.
	ancient := makeBatch(0, 1, 2)
	ancient.TS[0] = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	e.publish(ancient, ancient.ID())
	// Later good batches still land.
	for k := 0; k < 2; k++ {
		b := makeBatch(k, 3, 6)
		e.publish(b, b.ID())
	}
	e.waitRows(2 * rowsIn(3, 6))
	e.requireNoDuplicates(2 * rowsIn(3, 6))

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	dl, err := e.js.Stream(ctx, streams.DeadLetter)
	require.NoError(t, err)

	got, err := dl.GetLastMsgForSubject(ctx, streams.DeadLetterSubject("sink", 1))
	require.NoError(t, err)
	require.Equal(t, corrupt.Data, got.Data)
	require.Contains(t, got.Header.Get(streams.HeaderReason), "corrupt batch encoding")
	require.Equal(t, streams.BatchesSubject(1), got.Header.Get(streams.HeaderSource))
	require.Equal(t, "1:1-2", got.Header.Get(streams.HeaderBatchID))
	require.Equal(t, "1", got.Header.Get(streams.HeaderSourceSeq))

	got, err = dl.GetLastMsgForSubject(ctx, streams.DeadLetterSubject("sink", 0))
	require.NoError(t, err)
	require.Equal(t, batch.Encode(ancient), got.Data)
	require.Contains(t, got.Header.Get(streams.HeaderReason), "overflow")
	require.Equal(t, ancient.ID(), got.Header.Get(streams.HeaderBatchID))
	require.Equal(t, streams.BatchesSubject(0), got.Header.Get(streams.HeaderSource))

	for k := 0; k < 2; k++ {
		require.Equal(t, 1.0, value(s.shard(k).DeadLetters))
		require.Equal(t, 1.0, value(s.shard(k).DeadLettered))
		require.Equal(t, 1.0, value(s.shard(k).Inserted))
	}
	info, err := dl.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), info.State.Msgs)

	// Nothing is left in BATCHES: the dead-lettered batches were terminated.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		bs, err := e.js.Stream(ctx, streams.Batches)
		if !assert.NoError(c, err) {
			return
		}
		info, err := bs.Info(ctx)
		if assert.NoError(c, err) {
			assert.Zero(c, info.State.Msgs)
		}
	}, 10*time.Second, 10*time.Millisecond)
}

// TestSinkReplayBypassesTheWatermark: a batch dead-lettered while
// ClickHouse refused its rows (here: a column of the wrong type), replayed
// after the cause is fixed and after later batches raised the watermark,
// lands once; replaying it again, or an overlapping replay, inserts nothing.
func TestSinkReplayBypassesTheWatermark(t *testing.T) {
	e := newEnv(t)
	s := e.startSink(e.config(2))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// The sink made the schema at start; the table is still empty.
	require.NoError(t, e.conns[0].Exec(ctx, "ALTER TABLE surge.events_local MODIFY COLUMN user_id UInt64"))
	poison := makeBatch(0, 1, 5)
	e.publish(poison, poison.ID())
	dl, err := e.js.Stream(ctx, streams.DeadLetter)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		info, err := dl.Info(ctx)
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(1), info.State.Msgs)
		}
	}, 20*time.Second, 20*time.Millisecond)
	dead, err := dl.GetLastMsgForSubject(ctx, streams.DeadLetterSubject("sink", 0))
	require.NoError(t, err)
	require.Equal(t, batch.Encode(poison), dead.Data)

	require.NoError(t, e.conns[0].Exec(ctx, "ALTER TABLE surge.events_local MODIFY COLUMN user_id String"))
	later := makeBatch(0, 6, 8)
	e.publish(later, later.ID())
	e.waitRows(rowsIn(6, 8))
	require.Equal(t, 8.0, value(s.shard(0).Watermark))

	replay := func(data []byte, msgID string) {
		msg := nats.NewMsg(streams.BatchesSubject(0))
		msg.Data = data
		msg.Header.Set(streams.HeaderReplay, strconv.FormatUint(dead.Sequence, 10))
		e.publishMsg(msg, msgID)
	}
	replay(dead.Data, "replay:1")
	e.waitRows(rowsIn(1, 8))
	replay(dead.Data, "replay:again")
	overlap := makeBatch(0, 4, 7)
	replay(batch.Encode(overlap), "replay:overlap")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 2.0, value(s.shard(0).Duplicates))
	}, 10*time.Second, 10*time.Millisecond)
	e.requireNoDuplicates(rowsIn(1, 8))
	require.Equal(t, expectedRows(0, 1, 8), e.rowsOfShard(0, 0))
	require.Equal(t, 8.0, value(s.shard(0).Watermark), "a replay never lowers the watermark")
}

func TestSinkRidesOutClickHouseRestart(t *testing.T) {
	e := newEnv(t)
	s := e.startSink(e.config(2))
	const batches = 40

	// Load: both shards, one batch of each every few milliseconds. Shard 1
	// lives on server 1, which is stopped and restarted mid-load.
	loadDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(15 * time.Millisecond)
		defer tick.Stop()
		for i := uint64(0); i < batches; i++ {
			<-tick.C
			for k := 0; k < 2; k++ {
				b := makeBatch(k, 5*i+1, 5*i+5)
				if err := e.tryPublish(b, b.ID()); err != nil {
					loadDone <- err
					return
				}
			}
		}
		loadDone <- nil
	}()

	server := e.ch.Servers[1]
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.GreaterOrEqual(c, value(s.shard(1).Watermark), 25.0)
	}, 30*time.Second, 5*time.Millisecond)
	require.NoError(t, server.Stop())
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.GreaterOrEqual(c, value(s.shard(1).Retries), 3.0)
	}, 30*time.Second, 10*time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	require.NoError(t, server.Start(ctx))

	require.NoError(t, <-loadDone)
	want := 2 * rowsIn(1, 5*batches)
	e.waitRows(want)
	e.requireNoDuplicates(want)
	require.Equal(t, expectedRows(1, 1, 5*batches), e.rowsOfShard(1, 1))
	require.Zero(t, value(s.shard(0).Retries), "shard 0's server never stopped")
	require.Zero(t, value(s.shard(1).DeadLetters))
	require.Equal(t, float64(5*batches), value(s.shard(1).Watermark))
	// An insert cut by the stop may have landed unseen: the sink then
	// finds it below the watermark and counts the batch as a duplicate.
	require.Equal(t, float64(batches), value(s.shard(1).Inserted)+
		value(s.shard(1).Duplicates))
	require.LessOrEqual(t, value(s.shard(1).Rows), float64(want/2))
}

func TestSinkShutdownFinishesAndAcksInFlightBatch(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(1)
	const batches = 30
	for i := uint64(0); i < batches; i++ {
		b := makeBatch(0, 10*i+1, 10*i+10)
		e.publish(b, b.ID())
	}

	first := e.startSink(cfg)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.GreaterOrEqual(c, value(first.shard(0).Watermark), 50.0)
	}, 30*time.Second, time.Millisecond)
	first.stop()

	// Every batch the sink inserted was acked (so removed from the work
	// queue) and nothing is held: the stop cut no insert and lost no ack.
	inserted := value(first.shard(0).Inserted)
	wm := value(first.shard(0).Watermark)
	require.Equal(t, wm, float64(e.count(0, "SELECT max(seq) FROM surge.events_local WHERE shard = 0")))
	require.Equal(t, wm, inserted*10)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	bs, err := e.js.Stream(ctx, streams.Batches)
	require.NoError(t, err)
	info, err := bs.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(batches)-uint64(inserted), info.State.Msgs)
	cons, err := bs.Consumer(ctx, sink.ConsumerName(0))
	require.NoError(t, err)
	cinfo, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Zero(t, cinfo.NumAckPending)

	second := e.startSink(cfg)
	e.waitRows(rowsIn(1, 10*batches))
	e.requireNoDuplicates(rowsIn(1, 10*batches))
	require.Zero(t, value(second.shard(0).Duplicates))
	require.Equal(t, float64(batches)-inserted, value(second.shard(0).Inserted))
}

func TestSinkTracesInsertUnderBatchSpan(t *testing.T) {
	e := newEnv(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	e.startSink(e.config(2), tp)

	// The batcher's span travels in the BATCHES message headers.
	parentCtx, parent := tp.Tracer("batcher").Start(t.Context(), "publish batch")
	b := makeBatch(1, 1, 3)
	msg := nats.NewMsg(streams.BatchesSubject(1))
	msg.Data = batch.Encode(b)
	msg.Header.Set(streams.HeaderBatchID, b.ID())
	telemetry.Inject(parentCtx, msg.Header)
	e.publishMsg(msg, b.ID())
	parent.End()
	e.waitRows(b.Len())

	inserts := func() []sdktrace.ReadOnlySpan {
		var out []sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			if s.Name() == "sink insert" {
				out = append(out, s)
			}
		}
		return out
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Len(c, inserts(), 1)
	}, 10*time.Second, 10*time.Millisecond)
	span := inserts()[0]
	require.Equal(t, parent.SpanContext().TraceID(), span.SpanContext().TraceID())
	require.Equal(t, parent.SpanContext().SpanID(), span.Parent().SpanID())
	attrs := map[attribute.Key]attribute.Value{}
	for _, kv := range span.Attributes() {
		attrs[kv.Key] = kv.Value
	}
	require.Equal(t, "clickhouse", attrs["db.system"].AsString())
	require.Equal(t, e.ch.Addrs()[1], attrs["server.address"].AsString())
	require.Equal(t, int64(1), attrs["surge.shard"].AsInt64())
	require.Equal(t, int64(b.Len()), attrs["surge.rows"].AsInt64())
	require.Equal(t, int64(len(msg.Data)), attrs["surge.bytes"].AsInt64())
	require.Equal(t, b.ID(), attrs["surge.batch_id"].AsString())
	require.Equal(t, "surge-sink-"+b.ID()+"-"+parent.SpanContext().TraceID().String()+"-1", attrs[sink.AttrQueryID].AsString(),
		"the query id carries the trace id")
}

// readyz is the status and body of the sink's /readyz.
func readyz(addr string) (int, string, error) {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// stalls is surge_sink_stalls_total{shard}, 0 while the series is absent.
func (r *runningSink) stalls(shard int) (float64, error) {
	mfs, err := r.reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != "surge_sink_stalls_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "shard" && lp.GetValue() == strconv.Itoa(shard) {
					return m.GetCounter().GetValue(), nil
				}
			}
		}
	}
	return 0, nil
}

// localRows is the number of rows of shard on server i.
func (e *testEnv) localRows(i, shard int) (uint64, error) {
	return e.tryCount(i, "SELECT count() FROM surge.events_local WHERE shard = ?", shard)
}

// TestSinkResumesSecondsAfterACrash: a sink killed with a batch in hand
// (fetched, never acked: its connection just closes) leaves the delivery
// pending on the server. The next sink lands every batch, that one
// included, exactly once within seconds: the AckWait is short, not the
// minute it was.
func TestSinkResumesSecondsAfterACrash(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(2)
	const batches = 6
	for k := range 2 {
		for i := range uint64(batches) {
			b := makeBatch(k, 5*i+1, 5*i+5)
			e.publish(b, b.ID())
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	// The killed sink: it fetched shard 1's first batch with the sink's
	// own consumer and died before acking it.
	nc, err := nats.Connect(e.ns.ClientURL())
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	cons, err := js.CreateOrUpdateConsumer(ctx, streams.Batches, cfg.ConsumerConfig(1))
	require.NoError(t, err)
	fetched, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	held := 0
	for msg := range fetched.Messages() {
		require.Equal(t, makeBatch(1, 1, 5).ID(), msg.Headers().Get(streams.HeaderBatchID))
		held++
	}
	require.NoError(t, fetched.Error())
	require.Equal(t, 1, held)
	nc.Close()
	left, err := e.js.Consumer(ctx, streams.Batches, sink.ConsumerName(1))
	require.NoError(t, err)
	require.Equal(t, 1, left.CachedInfo().NumAckPending, "the dead sink's delivery is still pending")

	killed := time.Now()
	s := e.startSink(cfg)
	want := 2 * rowsIn(1, 5*batches)
	// The old AckWait (2 x insert timeout + max backoff) was 66s by default.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.tryCount(0, "SELECT count() FROM surge.events")
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(want), n)
		}
	}, 15*time.Second, 20*time.Millisecond, "every batch lands within seconds of the crash")
	t.Logf("all batches landed %s after the crash (ack_wait %s)", time.Since(killed).Round(time.Millisecond), cfg.AckWait)
	e.requireNoDuplicates(want)
	for k := range 2 {
		require.Equal(t, expectedRows(k, 1, 5*batches), e.rowsOfShard(k%2, k), "shard %d", k)
		require.Equal(t, float64(batches), value(s.shard(k).Inserted), "shard %d", k)
		require.Zero(t, value(s.shard(k).Duplicates), "shard %d", k)
	}
}

// TestSinkWatchdogNamesAStalledShard: while shard 1's ClickHouse server is
// down and batches wait, the shard's stall is logged, counted once and
// shown on /readyz with what the shard waits on; shard 0 goes on. When the
// server is back, the shard lands everything exactly once and the sink is
// ready again.
func TestSinkWatchdogNamesAStalledShard(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(2)
	cfg.StallTimeout = 2 * time.Second
	s := e.startSink(cfg)
	addr := s.svc.AdminAddr()
	server := e.ch.Servers[1] // shard 1's
	require.NoError(t, server.Stop())

	const batches = 5
	for k := range 2 {
		for i := range uint64(batches) {
			b := makeBatch(k, 5*i+1, 5*i+5)
			e.publish(b, b.ID())
		}
	}
	perShard := rowsIn(1, 5*batches)

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		code, body, err := readyz(addr)
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, http.StatusServiceUnavailable, code)
		assert.Contains(c, body, "stalled shard 1: ")
		assert.Regexp(c, `(insert into|sequences from) clickhouse `+server.Addr(), body)
		assert.NotContains(c, body, "stalled shard 0")
		n, err := s.stalls(1)
		if assert.NoError(c, err) {
			assert.Equal(c, 1.0, n)
		}
	}, 20*time.Second, 20*time.Millisecond, "shard 1 reported stalled")
	// Shard 0's server is up: its batches land meanwhile.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.localRows(0, 0)
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(perShard), n)
		}
	}, 20*time.Second, 20*time.Millisecond)
	require.Zero(t, value(s.shard(1).Inserted))
	require.Positive(t, value(s.shard(1).Retries))

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	require.NoError(t, server.Start(ctx))
	e.waitRows(2 * perShard)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		code, body, err := readyz(addr)
		if assert.NoError(c, err) {
			assert.Equal(c, http.StatusOK, code, "readyz: %s", body)
		}
	}, 20*time.Second, 20*time.Millisecond, "ready once shard 1 makes progress")
	e.requireNoDuplicates(2 * perShard)
	require.Equal(t, expectedRows(1, 1, 5*batches), e.rowsOfShard(1, 1))
	for k, want := range []float64{0, 1} {
		n, err := s.stalls(k)
		require.NoError(t, err)
		require.Equal(t, want, n, "stalls of shard %d", k)
	}
	require.Equal(t, float64(batches), value(s.shard(1).Inserted)+value(s.shard(1).Duplicates))
}

// TestSinkRecreatesALostConsumer: a consumer deleted under a running sink
// (as a NATS server that lost its store loses it) is made again, and the
// shard's next batches land.
func TestSinkRecreatesALostConsumer(t *testing.T) {
	e := newEnv(t)
	s := e.startSink(e.config(2))
	first := makeBatch(1, 1, 5)
	e.publish(first, first.ID())
	e.waitRows(first.Len())

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	require.NoError(t, e.js.DeleteConsumer(ctx, streams.Batches, sink.ConsumerName(1)))
	next := makeBatch(1, 6, 9)
	e.publish(next, next.ID())

	e.waitRows(rowsIn(1, 9))
	e.requireNoDuplicates(rowsIn(1, 9))
	require.Equal(t, 2.0, value(s.shard(1).Inserted))
	_, err := e.js.Consumer(ctx, streams.Batches, sink.ConsumerName(1))
	require.NoError(t, err)
}
