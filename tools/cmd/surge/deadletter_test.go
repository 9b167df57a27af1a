package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
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
