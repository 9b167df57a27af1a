package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/tenants"
)

// eventsBody is a /v1/events body of n small events of user u.
func eventsBody(n int, u string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"click","user_id":%q}`, u)
	}
	b.WriteByte(']')
	return b.String()
}

// setLimits sets tenant's limits in the bucket and waits until every
// given instance applies them.
func setLimits(t *testing.T, h *harness, tenant string, l tenants.Limits, svcs ...*Service) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := tenants.Open(ctx, h.js, 1)
	require.NoError(t, err)
	require.NoError(t, st.Set(ctx, tenant, l))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, s := range svcs {
			w := s.quotas.watcher.Load()
			if assert.NotNil(c, w) {
				assert.Equal(c, l, w.Limits(tenant))
			}
		}
	}, 10*time.Second, 5*time.Millisecond)
}

func TestQuotaIsSetAtRunTimeAndRefusesOnlyItsTenant(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.APIKeys = map[string]string{"key-a": "a", "key-b": "b"} })
	authA, authB := []string{"Authorization", "Bearer key-a"}, []string{"Authorization", "Bearer key-b"}

	r := h.post(eventsBody(10, "u"), authA...)
	require.Equal(t, http.StatusAccepted, r.status)
	require.Empty(t, r.header.Get("RateLimit-Limit"), "no quota, no RateLimit headers")

	setLimits(t, h, "a", tenants.Limits{EventsPerSecond: 1, Burst: 20}, h.svc)
	r = h.post(eventsBody(20, "u"), authA...)
	require.Equal(t, http.StatusAccepted, r.status, r.rawBody)
	require.Equal(t, "1", r.header.Get("RateLimit-Limit"))
	require.Equal(t, "0", r.header.Get("RateLimit-Remaining"))
	require.Equal(t, "20", r.header.Get("RateLimit-Reset"), "20 events at 1/s to fill the bucket again")

	stored := h.streamMsgs()
	r = h.post(eventsBody(1, "u"), authA...)
	require.Equal(t, http.StatusTooManyRequests, r.status)
	require.Contains(t, r.errorBody.Error, "tenant a is over its quota of events per second")
	retry, err := strconv.Atoi(r.header.Get("Retry-After"))
	require.NoError(t, err)
	require.Equal(t, 1, retry, "one event at 1/s")
	require.Equal(t, "1", r.header.Get("RateLimit-Limit"))
	require.Equal(t, stored, h.streamMsgs(), "a request over quota stores nothing")

	// Segment's routes answer the same way.
	seg := h.do(http.MethodPost, "/v1/batch", map[string]string{"Authorization": basic("key-a")},
		bytes.NewBufferString(`{"batch":[{"type":"track","event":"e","userId":"u","messageId":"m1"}]}`))
	require.Equal(t, http.StatusTooManyRequests, seg.status)
	require.NotEmpty(t, seg.header.Get("Retry-After"))

	// Tenant b has no quota of its own and the default is none.
	for range 5 {
		r = h.post(eventsBody(100, "u"), authB...)
		require.Equal(t, http.StatusAccepted, r.status)
	}
	require.Equal(t, stored+5, h.streamMsgs())
	require.Equal(t, float64(2), testutil.ToFloat64(h.svc.metrics.quotaRefused.WithLabelValues("a", "events")))
	require.Equal(t, float64(2), testutil.ToFloat64(h.svc.metrics.requestsRejected.WithLabelValues(reasonOverQuota)))
	// a sees its refusals among its problems.
	h.flushProblems()
	got := h.problemsOf("key-a")
	require.Len(t, got.Problems, 1)
	require.Equal(t, problems.ReasonOverQuota, got.Problems[0].Reason)
	require.Equal(t, int64(2), got.Problems[0].Count)

	// A default quota in the bucket applies to b, which has none of its
	// own; bytes are limited too.
	setLimits(t, h, "", tenants.Limits{BytesPerSecond: 100}, h.svc)
	r = h.post(eventsBody(10, "u"), authB...) // more than 100 bytes: a full bucket takes it
	require.Equal(t, http.StatusAccepted, r.status)
	r = h.post(eventsBody(1, "u"), authB...)
	require.Equal(t, http.StatusTooManyRequests, r.status)
	require.Contains(t, r.errorBody.Error, "over its quota of bytes per second")
	require.Equal(t, float64(1), testutil.ToFloat64(h.svc.metrics.quotaRefused.WithLabelValues("b", "bytes")))
}

// startAnother runs a second ingest instance with h's configuration
// against h's NATS server.
func startAnother(t *testing.T, h *harness, mutate func(*Config)) *Service {
	t.Helper()
	cfg := testConfig(h.ns.ClientURL())
	mutate(&cfg)
	svc, err := New(cfg, service.Deps{Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(15 * time.Second):
			t.Error("the second ingest did not stop within 15 s")
		}
	})
	return svc
}

// Tenant a, limited to 2,000 events/s with a burst of 4,000, sends about
// 10,000/s through two instances; tenant b sends 500/s. What a gets summed
// over both instances is its quota once, not twice; b is never refused.
func TestQuotaIsSharedByTheLiveInstances(t *testing.T) {
	keys := func(c *Config) { c.Ingest.APIKeys = map[string]string{"key-a": "a", "key-b": "b"} }
	h := start(t, keys)
	other := startAnother(t, h, keys)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, s := range []*Service{h.svc, other} {
			p := s.quotas.presence.Load()
			if assert.NotNil(c, p) {
				assert.Equal(c, 2, p.Live())
			}
		}
	}, 20*time.Second, 10*time.Millisecond)
	const rate, burst = 2000, 4000
	setLimits(t, h, "a", tenants.Limits{EventsPerSecond: rate, Burst: burst}, h.svc, other)

	type tally struct {
		mu                 sync.Mutex
		accepted, refused  int
		noRetryAfter, errs int
		lastErr            error
	}
	var a, b tally
	send := func(addr, key string, events int, every time.Duration, until time.Time, into *tally) {
		body := eventsBody(events, "u")
		tick := time.NewTicker(every)
		defer tick.Stop()
		for time.Now().Before(until) {
			<-tick.C
			req, _ := http.NewRequest(http.MethodPost, "http://"+addr+EventsPath, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := h.client.Do(req)
			into.mu.Lock()
			switch {
			case err != nil:
				into.errs++
				into.lastErr = err
			case resp.StatusCode == http.StatusAccepted:
				into.accepted += events
			case resp.StatusCode == http.StatusTooManyRequests:
				into.refused += events
				if resp.Header.Get("Retry-After") == "" {
					into.noRetryAfter++
				}
			default:
				into.errs++
				into.lastErr = errors.New(resp.Status)
			}
			into.mu.Unlock()
			if resp != nil {
				_ = resp.Body.Close()
			}
		}
	}
	const window = 4 * time.Second
	started := time.Now()
	until := started.Add(window)
	var wg sync.WaitGroup
	for _, addr := range []string{h.svc.Addr(), other.Addr()} {
		// a: 100 events every 20 ms per instance, 10,000/s in all.
		wg.Go(func() { send(addr, "key-a", 100, 20*time.Millisecond, until, &a) })
		// b: 25 events every 100 ms per instance, 500/s in all.
		wg.Go(func() { send(addr, "key-b", 25, 100*time.Millisecond, until, &b) })
	}
	wg.Wait()
	elapsed := time.Since(started)

	require.Zero(t, a.errs, "a: %v", a.lastErr)
	require.Zero(t, b.errs, "b: %v", b.lastErr)
	require.Zero(t, b.refused, "b is under no quota")
	require.Positive(t, a.refused)
	require.Zero(t, a.noRetryAfter, "every 429 says when to retry")
	// The burst, then the rate: the quota once over both instances. The
	// bound is on the quota's own arithmetic, with 10% either way.
	want := float64(burst) + rate*elapsed.Seconds()
	t.Logf("a accepted %d events in %s (quota %.0f), refused %d; b accepted %d", a.accepted, elapsed.Round(time.Millisecond), want, a.refused, b.accepted)
	require.InEpsilon(t, want, float64(a.accepted), 0.10)
}

// A tenant holding its share of the in-flight slots (two requests whose
// bodies never finish) is refused a third; another tenant is not.
func TestTenantInFlightShare(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Ingest.APIKeys = map[string]string{"key-a": "a", "key-b": "b"}
		c.Ingest.MaxInFlight = 8
		c.Ingest.MaxInFlightPerTenant = 2
	})
	for range 2 {
		c, err := net.Dial("tcp", h.svc.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		_, err = fmt.Fprintf(c, "POST /v1/events HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer key-a\r\n"+
			"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[")
		require.NoError(t, err)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, float64(2), testutil.ToFloat64(h.svc.metrics.inFlight))
	}, 10*time.Second, 5*time.Millisecond)

	r := h.post(eventsBody(1, "u"), "Authorization", "Bearer key-a")
	require.Equal(t, http.StatusTooManyRequests, r.status)
	require.Equal(t, "tenant a has 2 requests in flight, its most; retry later", r.errorBody.Error)
	require.Equal(t, "1", r.header.Get("Retry-After"))
	r = h.post(eventsBody(1, "u"), "Authorization", "Bearer key-b")
	require.Equal(t, http.StatusAccepted, r.status)
}

// A Segment batch streamed past max_body_bytes (a huge message beside a
// small one) is charged its whole size, not the part admission held.
func TestQuotaChargesAStreamedBatchWhole(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.APIKeys = map[string]string{"key-c": "c"} })
	setLimits(t, h, "c", tenants.Limits{BytesPerSecond: 1, BytesBurst: 5 << 20}, h.svc)
	huge := strings.Repeat("x", 6<<20)
	body := `{"batch":[{"type":"track","event":"e","userId":"u","messageId":"small"},` +
		`{"type":"track","event":"e","userId":"u","messageId":"huge","properties":{"blob":"` + huge + `"}}]}`
	seg := func(b string) response {
		// A Segment 200 is {"success":true}, which send does not decode.
		r, err := h.send(http.MethodPost, "/v1/batch", map[string]string{"Authorization": basic("key-c")}, strings.NewReader(b))
		if r.status != http.StatusOK {
			require.NoError(t, err)
		}
		return r
	}
	r := seg(body)
	require.Equal(t, http.StatusOK, r.status, r.rawBody)
	require.Equal(t, success, r.rawBody)
	// 6 MiB taken from a full bucket of 5: in debt, so the next small
	// batch waits. Charged only the 4 MiB held, it would have passed.
	r = seg(`{"batch":[{"type":"track","event":"e","userId":"u","messageId":"next"}]}`)
	require.Equal(t, http.StatusTooManyRequests, r.status)
	require.Contains(t, r.errorBody.Error, "over its quota of bytes per second")
}
