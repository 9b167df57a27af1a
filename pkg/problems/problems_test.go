package problems_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a test clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newRecorder(t *testing.T, reg *prometheus.Registry, opts ...problems.Option) (*problems.Recorder, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	r, err := problems.NewRecorder("test", reg, append([]problems.Option{problems.WithClock(c.now)}, opts...)...)
	require.NoError(t, err)
	return r, c
}

func TestAddAggregatesPerTenantReasonFieldAndFlushesOneMessageEach(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	reg := prometheus.NewRegistry()
	r, c := newRecorder(t, reg)
	first := c.now()
	for i := range 5 {
		r.Add("a", problems.ReasonMissingField, "type", problems.Sample{ID: fmt.Sprintf("m%d", i), Detail: "required"})
		c.add(time.Second)
	}
	r.Add("a", problems.ReasonUnknownField, "colour", problems.Sample{ID: "m9"})
	r.AddN("b", problems.ReasonTypeConflict, "/amount", 40, problems.Sample{ID: "e1", Detail: "value does not fit column p_amount"})
	r.Add("not a tenant!", problems.ReasonUnauthorized, "", problems.Sample{})

	n, err := r.Flush(t.Context(), js)
	require.NoError(t, err)
	require.Equal(t, 4, n, "one message per (tenant, reason, field)")
	n, err = r.Flush(t.Context(), js)
	require.NoError(t, err)
	require.Equal(t, 0, n, "a flush empties the map")

	aggs, truncated, err := problems.Read(t.Context(), js, problems.Query{Tenant: "a", Since: first.Add(-time.Hour)})
	require.NoError(t, err)
	require.False(t, truncated)
	require.Len(t, aggs, 2, "tenant a's only")
	require.Equal(t, problems.Aggregate{
		Tenant: "a", Reason: problems.ReasonMissingField, Field: "type", Count: 5,
		First: first, Last: first.Add(4 * time.Second), Service: "test",
		Samples: []problems.Sample{{ID: "m0", Detail: "required"}, {ID: "m1", Detail: "required"}, {ID: "m2", Detail: "required"}},
	}, aggs[0], "the first %d samples", problems.MaxSamples)
	require.Equal(t, problems.ReasonUnknownField, aggs[1].Reason)
	require.Equal(t, int64(1), aggs[1].Count)

	all, _, err := problems.Read(t.Context(), js, problems.Query{Since: first.Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, all, 4, "every tenant's")
	byTenant := map[string]int64{}
	for _, a := range all {
		byTenant[a.Tenant] += a.Count
	}
	require.Equal(t, map[string]int64{"a": 6, "b": 40, problems.Unknown: 1}, byTenant)

	require.Equal(t, 5.0, value(t, reg, "surge_test_problems_total", problems.ReasonMissingField))
	require.Equal(t, 40.0, value(t, reg, "surge_test_problems_total", problems.ReasonTypeConflict))
}

// value is the value of the counter name (with reason, when not "").
func value(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{reason=%q}", name, reason)
	return 0
}

func TestKeysAreBoundedAndTheRestCountedInOverflow(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	reg := prometheus.NewRegistry()
	r, c := newRecorder(t, reg, problems.WithMaxKeys(2))
	for i := range 10 {
		r.Add("a", problems.ReasonUnknownField, fmt.Sprintf("f%d", i), problems.Sample{ID: fmt.Sprint(i)})
	}
	r.Add("a", problems.ReasonUnknownField, "f0", problems.Sample{}) // a held key still counts in it
	n, err := r.Flush(t.Context(), js)
	require.NoError(t, err)
	require.Equal(t, 3, n, "two keys and the overflow")

	aggs, _, err := problems.Read(t.Context(), js, problems.Query{Since: c.now().Add(-time.Hour)})
	require.NoError(t, err)
	counts := map[string]int64{}
	for _, a := range aggs {
		counts[a.Tenant+"/"+a.Field] = a.Count
	}
	require.Equal(t, map[string]int64{"a/f0": 2, "a/f1": 1, problems.Overflow + "/": 8}, counts)
	for _, a := range aggs {
		if a.Tenant == problems.Overflow {
			require.Equal(t, problems.ReasonOverflow, a.Reason)
			require.Len(t, a.Samples, problems.MaxSamples)
			require.Equal(t, "tenant a, reason unknown_field, field f2", a.Samples[0].Detail, "the operator sees what overflowed")
		}
	}
	require.Equal(t, 8.0, value(t, reg, "surge_test_problems_overflow_total", ""))
	require.Equal(t, 11.0, value(t, reg, "surge_test_problems_total", problems.ReasonUnknownField))
}

func TestSamplesAreClipped(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	r, c := newRecorder(t, prometheus.NewRegistry())
	long := strings.Repeat("é", 300) // 600 bytes
	r.Add("a", problems.ReasonInvalidValue, strings.Repeat("f", 1000), problems.Sample{ID: long, Detail: long, Excerpt: problems.Excerpt([]byte(long))})
	_, err := r.Flush(t.Context(), js)
	require.NoError(t, err)
	aggs, _, err := problems.Read(t.Context(), js, problems.Query{Tenant: "a", Since: c.now().Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, aggs, 1)
	require.Len(t, aggs[0].Field, problems.MaxField)
	s := aggs[0].Samples[0]
	require.Equal(t, strings.Repeat("é", 128), s.ID, "cut on a character boundary")
	require.Equal(t, strings.Repeat("é", 100), s.Detail)
	require.Equal(t, strings.Repeat("é", 100), s.Excerpt)
}

// failing publishes nothing while down, and counts its calls.
type failing struct {
	js    jetstream.JetStream
	down  bool
	calls int
}

func (f *failing) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	f.calls++
	if f.down {
		return nil, errors.New("nats down")
	}
	return f.js.PublishMsg(ctx, m, opts...)
}

func TestAFailedFlushIsRetriedOnceThenDropped(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	reg := prometheus.NewRegistry()
	r, c := newRecorder(t, reg)
	pub := &failing{js: js, down: true}

	r.Add("a", problems.ReasonMissingField, "type", problems.Sample{})
	r.Add("a", problems.ReasonMissingField, "user_id", problems.Sample{})
	n, err := r.Flush(t.Context(), pub)
	require.ErrorContains(t, err, "nats down")
	require.Equal(t, 0, n)
	require.Equal(t, 1, pub.calls, "the first failure ends the flush")
	require.Equal(t, 2.0, value(t, reg, "surge_test_problems_flush_failures_total", ""))

	// The next flush publishes them, and what came since.
	pub.down = false
	r.Add("a", problems.ReasonUnknownField, "x", problems.Sample{})
	n, err = r.Flush(t.Context(), pub)
	require.NoError(t, err)
	require.Equal(t, 3, n)

	// Failing twice drops them.
	pub.down = true
	r.Add("b", problems.ReasonMissingField, "type", problems.Sample{})
	_, err = r.Flush(t.Context(), pub)
	require.Error(t, err)
	_, err = r.Flush(t.Context(), pub)
	require.Error(t, err)
	require.Equal(t, 1.0, value(t, reg, "surge_test_problems_dropped_total", ""))
	pub.down = false
	n, err = r.Flush(t.Context(), pub)
	require.NoError(t, err)
	require.Equal(t, 0, n, "nothing is held past its retry")

	aggs, _, err := problems.Read(t.Context(), js, problems.Query{Since: c.now().Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, aggs, 3, "tenant a's three; b's was dropped")
}

func TestRunFlushesAtStop(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	r, c := newRecorder(t, prometheus.NewRegistry(), problems.WithInterval(time.Hour))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, js)
	}()
	r.Add("a", problems.ReasonOverQuota, "", problems.Sample{})
	cancel()
	<-done
	aggs, _, err := problems.Read(t.Context(), js, problems.Query{Tenant: "a", Since: c.now().Add(-time.Hour)})
	require.NoError(t, err)
	require.Len(t, aggs, 1, "the final flush published it")
}

func TestReadIsBoundedAndTheStoreDropsTheOldest(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := streams.DefaultConfig()
	cfg.ProblemsMaxPerTenant = 5
	require.NoError(t, streams.Ensure(t.Context(), js, cfg))
	r, c := newRecorder(t, prometheus.NewRegistry())
	for i := range 8 {
		r.Add("a", problems.ReasonMissingField, fmt.Sprintf("f%d", i), problems.Sample{})
		_, err := r.Flush(t.Context(), js)
		require.NoError(t, err)
	}
	aggs, truncated, err := problems.Read(t.Context(), js, problems.Query{Tenant: "a", Since: c.now().Add(-time.Hour)})
	require.NoError(t, err)
	require.False(t, truncated)
	var fields []string
	for _, a := range aggs {
		fields = append(fields, a.Field)
	}
	require.Equal(t, []string{"f3", "f4", "f5", "f6", "f7"}, fields, "the oldest three went")

	aggs, truncated, err = problems.Read(t.Context(), js, problems.Query{Tenant: "a", Since: c.now().Add(-time.Hour), Limit: 2})
	require.NoError(t, err)
	require.True(t, truncated)
	require.Len(t, aggs, 2)

	aggs, truncated, err = problems.Read(t.Context(), js, problems.Query{Tenant: "nobody", Since: c.now().Add(-time.Hour)})
	require.NoError(t, err)
	require.False(t, truncated)
	require.Empty(t, aggs)
}

func TestEventReasons(t *testing.T) {
	p := event.Parser{Limits: event.Limits{MaxEvents: 10, MaxEventBytes: 100}}
	body := `[{"type":"a"},{"user_id":"u","type":"a","colour":1},{"user_id":"u","type":"","ts":"x"},7,{"user_id":"u","type":"a","properties":{"p":"` + strings.Repeat("x", 100) + `"}},{"user_id":"u","type":"a\ud800"}]`
	items, err := p.ParseEach([]byte(body), event.FormatJSON, "t", time.Now(), func(int) string { return "id" })
	require.NoError(t, err)
	got := map[string][]string{}
	for _, it := range items {
		for _, pr := range it.Problems {
			got[problems.EventReason(pr)] = append(got[problems.EventReason(pr)], pr.Field)
		}
	}
	require.Equal(t, map[string][]string{
		problems.ReasonMissingField:   {"user_id"},
		problems.ReasonUnknownField:   {"colour"},
		problems.ReasonInvalidValue:   {"type", "ts"},
		problems.ReasonMalformedEvent: {""},
		problems.ReasonEventTooLarge:  {""},
		problems.ReasonInvalidUTF8:    {"type"},
	}, got)
	require.Equal(t, problems.ReasonEventTooLarge, problems.EventReason(event.Problem{
		Reason: `message_too_large: messageId "big1" is 5000 bytes, more than max_event_bytes 200`}), "ingest's huge Segment message")
}

func TestFold(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	aggs := []problems.Aggregate{
		{Tenant: "a", Reason: problems.ReasonUnknownField, Field: "x", Count: 2, First: t0, Last: t0.Add(time.Second), Samples: []problems.Sample{{ID: "1"}, {ID: "2"}}},
		{Tenant: "a", Reason: problems.ReasonMissingField, Field: "type", Count: 3, First: t0.Add(time.Minute), Last: t0.Add(2 * time.Minute), Samples: []problems.Sample{{ID: "3"}}},
		{Tenant: "a", Reason: problems.ReasonUnknownField, Field: "y", Count: 5, First: t0.Add(-time.Minute), Last: t0, Samples: []problems.Sample{{ID: "4"}, {ID: "5"}}},
	}
	got := problems.Fold(aggs, 3)
	require.Equal(t, []problems.Summary{
		{Reason: problems.ReasonMissingField, Count: 3, Fields: []problems.FieldCount{{Field: "type", Count: 3}},
			First: t0.Add(time.Minute), Last: t0.Add(2 * time.Minute), Samples: []problems.Sample{{ID: "3"}}, Docs: problems.DocsPage + "#missing_field"},
		{Reason: problems.ReasonUnknownField, Count: 7, Fields: []problems.FieldCount{{Field: "y", Count: 5}, {Field: "x", Count: 2}},
			First: t0.Add(-time.Minute), Last: t0.Add(time.Second), Samples: []problems.Sample{{ID: "1"}, {ID: "2"}, {ID: "4"}}, Docs: problems.DocsPage + "#unknown_field"},
	}, got)
}

// Every reason's docs link leads to a heading of docs/http-api.md.
func TestEveryReasonIsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "http-api.md"))
	require.NoError(t, err)
	require.Contains(t, string(doc), "\n## Problems\n")
	for _, reason := range problems.Reasons {
		require.Contains(t, string(doc), "\n#### `"+reason+"`\n", "a heading whose anchor is #%s", reason)
	}
}
