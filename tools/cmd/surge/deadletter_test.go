package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/services/ingest"
	"github.com/surge-events/surge/services/sink"
)

// httpClient bounds every request of the tests.
var httpClient = &http.Client{Timeout: 10 * time.Second}

// chSQL is chserver.Query on the test goroutine.
func chSQL(t *testing.T, srv *chserver.Server, sql string) string {
	t.Helper()
	out, err := chserver.Query(srv.HTTPAddr(), sql)
	require.NoError(t, err)
	return out
}

func testBatch(shard int, first, last uint64) *batch.Batch {
	b := batch.NewBuilder(shard, batch.Policy{MaxRows: 1 << 20, MaxBytes: 1 << 30, MaxAge: time.Hour})
	ts := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for seq := first; seq <= last; seq++ {
		b.Add(seq, []event.Event{
			{EventID: fmt.Sprintf("e-%d-%d-a", shard, seq), Tenant: "t", UserID: "u", Type: "dl", TS: ts, ReceivedAt: ts, Properties: "{}"},
			{EventID: fmt.Sprintf("e-%d-%d-b", shard, seq), Tenant: "t", UserID: "u", Type: "dl", TS: ts, ReceivedAt: ts, Properties: "{}"},
		}, time.Now())
	}
	return b.Cut()
}

// TestDeadLetterListShowReplay makes batches poison (server 0's user_id
// column changed to UInt64, so ClickHouse refuses their rows), lets later
// batches raise the watermark after the cause is removed, then lists, shows
// and replays the dead letters with the command: every row lands once.
func TestDeadLetterListShowReplay(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	ch, err := chserver.StartCluster(ctx, t.TempDir(), 2)
	require.NoError(t, err)
	t.Cleanup(ch.Stop)

	cfg := sink.DefaultConfig()
	cfg.NATS.URL = ns.ClientURL()
	cfg.Streams.MaxBytes = 64 << 20
	cfg.ClickHouse.Addrs = ch.Addrs()
	cfg.ClickHouse.InsertTimeout = 5 * time.Second
	cfg.Retry.Initial, cfg.Retry.Max = 50*time.Millisecond, 400*time.Millisecond
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Shards = 4
	s, err := sink.New(cfg, service.Deps{
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider(),
	})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		require.NoError(t, <-done)
	})

	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	publish := func(b *batch.Batch) {
		t.Helper()
		msg := nats.NewMsg(streams.BatchesSubject(b.Shard))
		msg.Data = batch.Encode(b)
		msg.Header.Set(streams.HeaderBatchID, b.ID())
		_, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(b.ID()))
		require.NoError(t, err)
	}
	const countRows = "SELECT count(), uniqExact(event_id) FROM surge.events_local FORMAT CSV"
	// awaitRows waits until server 0 holds want as "rows,distinct ids".
	awaitRows := func(want string) {
		t.Helper()
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			got, err := chserver.Query(ch.Servers[0].HTTPAddr(), countRows)
			if assert.NoError(c, err) {
				assert.Equal(c, want, got)
			}
		}, 30*time.Second, 20*time.Millisecond)
	}
	dlMsgs := func() (uint64, error) {
		st, err := js.Stream(ctx, streams.DeadLetter)
		if err != nil {
			return 0, err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return 0, err
		}
		return info.State.Msgs, nil
	}
	awaitDeadLetters := func(want uint64) {
		t.Helper()
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			n, err := dlMsgs()
			if assert.NoError(c, err) {
				assert.Equal(c, want, n)
			}
		}, 30*time.Second, 20*time.Millisecond)
	}
	requireDeadLetters := func(want uint64) {
		t.Helper()
		n, err := dlMsgs()
		require.NoError(t, err)
		require.Equal(t, want, n)
	}
	cli := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		require.NoError(t, runDeadLetter(ctx, append([]string{"--nats", ns.ClientURL(), "--dir", t.TempDir()}, args...), &out), out.String())
		return out.String()
	}

	// The sink made the schema once ready; the tables are empty.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := httpClient.Get("http://" + s.AdminAddr() + "/readyz")
		if !assert.NoError(c, err) {
			return
		}
		_ = resp.Body.Close()
		assert.Equal(c, http.StatusOK, resp.StatusCode)
	}, time.Minute, 20*time.Millisecond)
	require.Equal(t, "no dead letters\n", cli("list"))

	chSQL(t, ch.Servers[0], "ALTER TABLE surge.events_local MODIFY COLUMN user_id UInt64")
	// One after the other, so dead letter 1 is shard 0's.
	publish(testBatch(0, 1, 5))
	awaitDeadLetters(1)
	publish(testBatch(2, 1, 3))
	awaitDeadLetters(2)
	chSQL(t, ch.Servers[0], "ALTER TABLE surge.events_local MODIFY COLUMN user_id String")
	publish(testBatch(0, 6, 8))
	publish(testBatch(2, 4, 4))
	awaitRows("8,8")

	list := cli("list")
	require.Contains(t, list, "deadletter.sink.shard.0")
	require.Contains(t, list, "batches.shard.0:1")
	require.Contains(t, list, "0:1-5")
	require.Contains(t, list, "2:1-3")
	require.Contains(t, list, "2 dead letters")

	show := cli("show", "1")
	require.Contains(t, show, "Surge-Batch-Id: 0:1-5")
	require.Contains(t, show, "Surge-Reason: insert batch 0:1-5")
	require.Contains(t, show, "batch of shard 0, EVENTS sequences 1-5, 10 rows")
	require.Contains(t, show, "event_id=e-0-1-a")

	// Both batches are below their shard's watermark now: a plain
	// redelivery would be dropped; a replay lands.
	require.Equal(t, "replayed dead letter 1 to batches.shard.0\n", cli("replay", "1"))
	awaitRows("18,18")
	requireDeadLetters(1)
	require.Equal(t, "replayed dead letter 2 to batches.shard.2\n", cli("replay", "--all"))
	awaitRows("24,24")
	require.Equal(t, "no dead letters\n", cli("list"))
	requireDeadLetters(0)
	require.Equal(t, "no dead letters\n", cli("replay", "--all"))

	var out bytes.Buffer
	require.ErrorContains(t, runDeadLetter(ctx, []string{"--nats", ns.ClientURL(), "show", "99"}, &out), "dead letter 99")
	require.Equal(t, "24,24", chSQL(t, ch.Servers[0], countRows), "every row once, none twice")
}

// TestDeadLetterListShowEveryKind makes dead letters as each service makes
// them (ingest's for real, from a Segment batch with an invalid and a huge
// message; the batcher's and the partitioner's with their constructors)
// and checks that list names each one's service, shard or tenant and
// origin, and that show prints each body with the id its sender gave.
func TestDeadLetterListShowEveryKind(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ns, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})

	cfg := ingest.DefaultConfig()
	cfg.NATS.URL = ns.ClientURL()
	cfg.HTTP.Addr, cfg.Admin.Addr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Streams.MaxBytes = 64 << 20
	cfg.Ingest.APIKeys = map[string]string{"wk-acme": "acme"}
	cfg.Ingest.MaxBodyBytes, cfg.Ingest.MaxEventBytes, cfg.Ingest.SegmentMaxBodyBytes = 64<<10, 4<<10, 1<<20
	svc, err := ingest.New(cfg, service.Deps{Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider()})
	require.NoError(t, err)
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		require.NoError(t, <-done)
	})
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := httpClient.Get("http://" + svc.AdminAddr() + "/readyz")
		if assert.NoError(c, err) {
			_ = resp.Body.Close()
			assert.Equal(c, http.StatusOK, resp.StatusCode)
		}
	}, 30*time.Second, 20*time.Millisecond)

	// Dead letters 1 and 2: ingest's, an invalid message and one too large
	// whose messageId comes after its huge property.
	batch := `{"batch":[{"type":"track","event":"ok","userId":"u","messageId":"m-1"},` +
		`{"type":"track","userId":"u","messageId":"m-2"},` +
		`{"type":"track","event":"big","userId":"u","properties":{"blob":"` + strings.Repeat("x", 100<<10) + `"},"messageId":"m-3"}]}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+svc.Addr()+"/v1/batch", strings.NewReader(batch))
	require.NoError(t, err)
	req.SetBasicAuth("wk-acme", "")
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// Dead letters 3 and 4: the batcher's corrupt EVENTS message and the
	// partitioner's invalid producer event.
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	for _, dl := range []streams.DeadLetterMsg{
		{Service: "batcher", Subject: streams.DeadLetterSubject("batcher", 3), Data: []byte("not\x00events"),
			Reason: "decode: bad magic", Source: streams.EventsSubject(3), SourceSeq: 42},
		{Service: "partitioner", Subject: streams.InvalidSubject("acme"), Data: []byte(`{"event_id":"e-9","user_id":"u","type":""}`),
			Reason: "type: required", Source: "surge.in.acme.orders", SourceSeq: 7, Index: 0, HasIndex: true, Tenant: "acme"},
	} {
		_, err := js.PublishMsg(ctx, dl.Msg())
		require.NoError(t, err)
	}

	cli := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		require.NoError(t, runDeadLetter(ctx, append([]string{"--nats", ns.ClientURL(), "--dir", t.TempDir()}, args...), &out), out.String())
		return out.String()
	}
	list := cli("list")
	for _, want := range []string{
		"ingest tenant acme: HTTP request item 1",
		"ingest tenant acme: HTTP request item 2",
		"batcher shard 3: events.shard.3:42",
		"partitioner tenant acme: surge.in.acme.orders:7 item 0",
		"4 dead letters",
	} {
		require.Contains(t, list, want)
	}
	require.NotContains(t, list, " :0", "no dead letter without a source")

	show := cli("show", "1")
	require.Contains(t, show, "messageId: m-2\n")
	require.Contains(t, show, "Surge-Reason: event: required for track, a non-empty string")
	require.Contains(t, show, `  {"type":"track","userId":"u","messageId":"m-2"}`+"\n")

	show = cli("show", "2")
	require.Contains(t, show, "messageId: m-3\n", "named by its reason: its excerpt ends before its messageId")
	require.Contains(t, show, `Surge-Reason: message_too_large: messageId "m-3" is`)
	require.Contains(t, show, `  {"type":"track","event":"big","userId":"u","properties":{"blob":"xxxx`)

	show = cli("show", "3")
	require.Contains(t, show, "body: not readable as encoded events")
	require.Contains(t, show, `  not\x00events`+"\n")

	show = cli("show", "4")
	require.Contains(t, show, "event_id: e-9\n")
	require.Contains(t, show, `  {"event_id":"e-9","user_id":"u","type":""}`+"\n")
}
