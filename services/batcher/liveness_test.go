package batcher

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// fastRetry keeps the publish retries of a liveness test short.
var fastRetry = retry.Config{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Multiplier: 2}

// readyz answers the batcher's /readyz: its status and body.
func readyz(ctx context.Context, addr string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// stalls is surge_batcher_stalls_total{shard="k"}, 0 before its first
// stall. It returns its error, for use off the test goroutine.
func stalls(s *Service, k int) (int, error) {
	families, err := s.host.Registry.Gather()
	if err != nil {
		return 0, err
	}
	for _, f := range families {
		if f.GetName() != "surge_batcher_stalls_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "shard" && l.GetValue() == strconv.Itoa(k) {
					return int(m.GetCounter().GetValue()), nil
				}
			}
		}
	}
	return 0, nil
}

// assertStalls asserts surge_batcher_stalls_total{shard="k"}.
func assertStalls(t assert.TestingT, s *Service, k, want int) {
	n, err := stalls(s, k)
	if assert.NoError(t, err) {
		assert.Equal(t, want, n)
	}
}

// fillBatches fills BATCHES with messages on batches.shard.<k> until it
// refuses even the smallest: no batch fits any more.
func fillBatches(t *testing.T, js jetstream.JetStream, k int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, size := range []int{128 << 10, 4 << 10, 128, 1} {
		for {
			_, err := js.Publish(ctx, streams.BatchesSubject(k), make([]byte, size))
			if err != nil {
				require.ErrorContains(t, err, "maximum bytes exceeded")
				break
			}
		}
	}
}

// TestStalledShardIsReportedAndRecovers stalls a shard for real: BATCHES
// is full, so the shard's first batch gets no PubAck while EVENTS holds
// more of its events. The stall is logged, counted once, shown on /readyz
// with what the shard waits on, and the shard's consumer is recreated;
// once BATCHES has room every event is batched exactly once.
func TestStalledShardIsReportedAndRecovers(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 2, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: time.Hour})
	cfg.Owned = []int{0}
	cfg.StallTimeout = 2 * time.Second
	cfg.Retry = fastRetry
	cfg.Streams.MaxBytes = 1 << 20 // the smallest allowed, to fill BATCHES quickly
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, streams.Ensure(ctx, js, cfg.Streams))
	fillBatches(t, js, 1)

	// 20 messages of 10 events: four batches of 50 rows.
	want := publishEvents(t, js, 0, 20, 10, nil)
	b := start(t, cfg, nil)
	first := batch.ID(0, want[0].seq, want[4].seq)
	// 15 messages unread and the 5 of the first batch waiting for its PubAck.
	reason := "stalled shard 0: 20 pending, no progress for "
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assertStalls(c, b.Service, 0, 1)
		code, body, err := readyz(t.Context(), b.AdminAddr())
		if assert.NoError(c, err) {
			assert.Equal(c, http.StatusServiceUnavailable, code)
			assert.Contains(c, body, reason)
			assert.Contains(c, body, "waiting on PubAck of batch "+first)
		}
	}, 15*time.Second, 50*time.Millisecond)
	require.Equal(t, 15.0, testutil.ToFloat64(b.m.pending.WithLabelValues("0")), "the 15 messages after the first batch are unread")
	require.Zero(t, counter(b.m.batches, 0))
	require.Positive(t, counter(b.m.publishRetries, 0))

	// Room in BATCHES again: the publish lands and the shard goes on.
	st, err := js.Stream(ctx, streams.Batches)
	require.NoError(t, err)
	require.NoError(t, st.Purge(ctx, jetstream.WithPurgeSubject(streams.BatchesSubject(1))))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assertPublishedAndTookAll(c, b.Service, 0, 4)
		code, body, err := readyz(t.Context(), b.AdminAddr())
		if assert.NoError(c, err) {
			assert.Equal(c, http.StatusOK, code)
			assert.Equal(c, "ready\n", body)
		}
	}, 15*time.Second, 50*time.Millisecond)
	b.stop()
	n, err := stalls(b.Service, 0)
	require.NoError(t, err)
	require.Equal(t, 1, n, "one stall, counted once")
	require.Equal(t, []int{50, 50, 50, 50}, requireCoverage(t, 0, readBatches(t, js, 0), want))
	require.Equal(t, 4, cuts(b.Service, 0, batch.CutRows))
	require.Zero(t, cuts(b.Service, 0, batch.CutShutdown))
	require.Equal(t, uint64(0), subjectMsgs(t, js, streams.EventsSubject(0)))
}

// TestIdleShardIsNotStalled checks that time without events is no stall,
// even with batched messages kept in EVENTS for the purge delay.
func TestIdleShardIsNotStalled(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: time.Hour})
	cfg.StallTimeout = 300 * time.Millisecond
	cfg.PurgeDelay = time.Hour
	want := publishEvents(t, js, 0, 10, 10, nil)
	b := start(t, cfg, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertPublishedAndTookAll(c, b.Service, 0, 2) }, 10*time.Second, 10*time.Millisecond)
	// Through many stall timeouts and backlog checks, no stall.
	require.Never(t, func() bool {
		code, _, err := readyz(t.Context(), b.AdminAddr())
		n, gerr := stalls(b.Service, 0)
		return err != nil || code != http.StatusOK || gerr != nil || n != 0
	}, 10*cfg.StallTimeout, 50*time.Millisecond)
	require.Equal(t, uint64(10), subjectMsgs(t, js, streams.EventsSubject(0)), "batched, kept for the purge delay")
	b.stop()
	require.Equal(t, []int{50, 50}, requireCoverage(t, 0, readBatches(t, js, 0), want))
}

// restartable is an embedded NATS server that a test restarts on its
// port and store.
type restartable struct {
	t     *testing.T
	store string
	port  int
	s     *server.Server
}

func startRestartable(t *testing.T) *restartable {
	t.Helper()
	r := &restartable{t: t, store: t.TempDir()}
	s, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: r.store})
	require.NoError(t, err)
	r.s, r.port = s, s.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() {
		r.s.Shutdown()
		r.s.WaitForShutdown()
	})
	return r
}

// restart stops the server and starts it again on the same port and
// store; it returns once JetStream answers.
func (r *restartable) restart(js jetstream.JetStream) {
	r.t.Helper()
	r.s.Shutdown()
	r.s.WaitForShutdown()
	s, err := natsserver.Start(natsserver.Options{Port: r.port, StoreDir: r.store})
	require.NoError(r.t, err)
	r.s = s
	require.EventuallyWithT(r.t, func(c *assert.CollectT) {
		ctx, cancel := context.WithTimeout(r.t.Context(), time.Second)
		defer cancel()
		_, err := js.Stream(ctx, streams.Events)
		assert.NoError(c, err)
	}, 10*time.Second, 20*time.Millisecond)
}

// load publishes messages of rows events to shard k, one at a time, until
// stop is closed; each is retried with its message id until JetStream
// acknowledges it: a retry of a message that landed is a duplicate,
// acknowledged with the first copy's sequence. It runs off the test
// goroutine and returns its error.
func load(ctx context.Context, stop <-chan struct{}, js jetstream.JetStream, k, rows int) ([]published, error) {
	var out []published
	for i := 0; ; i++ {
		select {
		case <-stop:
			return out, nil
		default:
		}
		msg, events := newMessage(k, rows)
		msg.Header.Set(jetstream.MsgIDHeader, "load-"+strconv.Itoa(k)+"-"+strconv.Itoa(i)+"-"+events[0].EventID)
		err := retry.Do(ctx, fastRetry, func() error {
			actx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			ack, err := js.PublishMsg(actx, msg)
			if err == nil {
				out = append(out, published{seq: ack.Sequence, events: events})
			}
			return err
		}, nil)
		if err != nil {
			return out, err
		}
	}
}

// waitReady waits until the batcher's /readyz answers 200.
func waitReady(t *testing.T, b running) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		code, _, err := readyz(t.Context(), b.AdminAddr())
		if assert.NoError(c, err) {
			assert.Equal(c, http.StatusOK, code)
		}
	}, 10*time.Second, 10*time.Millisecond)
}

// TestResumesSoonAfterNATSRestartsUnderLoad restarts NATS three times
// while events arrive and a shard batches them: the shard's ordered
// consumer lives in the server's memory and is gone each time. After each
// restart the shard batches again within seconds, well below an
// AckWait-class wait; in the end every event is in EVENTS once and
// batched once, in contiguous ranges.
func TestResumesSoonAfterNATSRestartsUnderLoad(t *testing.T) {
	ns := startRestartable(t)
	js := natstest.JetStream(t, ns.s.ClientURL())
	cfg := testConfig(ns.s.ClientURL(), 1, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: 100 * time.Millisecond})
	cfg.StallTimeout = time.Second
	cfg.Retry = fastRetry
	// Kept messages let JetStream recognise a retried publish of the load
	// across a restart (its duplicate map is rebuilt from them).
	cfg.PurgeDelay = time.Minute
	b := start(t, cfg, nil)
	waitReady(t, b)

	type result struct {
		sent []published
		err  error
	}
	stop, done := make(chan struct{}), make(chan result, 1)
	go func() {
		sent, err := load(t.Context(), stop, js, 0, 10)
		done <- result{sent, err}
	}()
	batching := func(what string, since time.Time) {
		t.Helper()
		before := counter(b.m.batches, 0)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Greater(c, counter(b.m.batches, 0), before)
		}, 10*time.Second, 10*time.Millisecond)
		t.Logf("batching %s %s", what, time.Since(since).Round(time.Millisecond))
	}
	batching("under load", time.Now())
	for range 3 {
		ns.restart(js)
		batching("again after the restart, in", time.Now())
	}
	close(stop)
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("load did not stop")
	}
	require.NoError(t, res.err)
	t.Logf("%d messages sent", len(res.sent))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 10*len(res.sent), counter(b.m.rows, 0))
	}, 10*time.Second, 10*time.Millisecond)
	b.stop()
	requireCoverage(t, 0, readBatches(t, js, 0), res.sent)
	require.Equal(t, uint64(len(res.sent)), subjectMsgs(t, js, streams.EventsSubject(0)), "each message once in EVENTS, kept for the purge delay")
}

// TestStopUnderLoadResumesExactlyOnce stops a batcher while events still
// arrive and starts another: between them every event is batched once,
// in contiguous ranges.
func TestStopUnderLoadResumesExactlyOnce(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: time.Hour})
	first := start(t, cfg, nil)
	want := publishEvents(t, js, 0, 12, 10, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, 2, counter(first.m.batches, 0)) }, 10*time.Second, 10*time.Millisecond)
	// More events, and the stop, while the shard may be reading them.
	want = append(want, publishEvents(t, js, 0, 25, 10, nil)...)
	first.stop()

	cfg.Policy.MaxAge = 100 * time.Millisecond // the last rows are cut by age
	second := start(t, cfg, nil)
	want = append(want, publishEvents(t, js, 0, 8, 10, nil)...)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 450, counter(first.m.rows, 0)+counter(second.m.rows, 0))
	}, 10*time.Second, 10*time.Millisecond)
	second.stop()
	rows := requireCoverage(t, 0, readBatches(t, js, 0), want)
	total := 0
	for _, r := range rows {
		total += r
	}
	require.Equal(t, 450, total)
	require.Equal(t, uint64(0), subjectMsgs(t, js, streams.EventsSubject(0)))
}
