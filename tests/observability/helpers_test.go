// Package observability checks what operators see of the whole pipeline:
// one trace from an HTTP request to the ClickHouse insert of its batch,
// spans exported over OTLP with each service's name, metrics that count a
// known load exactly, and logs that carry the trace id of their batch.
package observability

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/tools/stack"
)

const shards = 4

func TestMain(m *testing.M) {
	// service.Main installs the W3C propagator; the in-process stack does not.
	otel.SetTextMapPropagator(propagation.TraceContext{})
	os.Exit(m.Run())
}

// startStack runs the pipeline with short batch ages, stopped at cleanup.
func startStack(t *testing.T, o stack.Options) *stack.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	o.Dir, o.Shards, o.ClickHouseServers, o.NATSPort = t.TempDir(), shards, 2, -1
	o.Policy = batch.Policy{MaxRows: 5000, MaxBytes: 8 << 20, MaxAge: 200 * time.Millisecond}
	st, err := stack.Start(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Stop()) })
	return st
}

// client is the tests' HTTP client: no request waits without bound.
var client = &http.Client{Timeout: 30 * time.Second}

// post sends body to ingest with the given headers and returns the status.
func post(t *testing.T, st *stack.Stack, body string, header ...string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, st.IngestURL+"/v1/events", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode
}

// events is a JSON array of n events of users prefix-0..prefix-(n-1), with
// event ids id-prefix-i.
func events(prefix string, n int) (string, []string) {
	var b strings.Builder
	var ids []string
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		id := fmt.Sprintf("id-%s-%d", prefix, i)
		ids = append(ids, id)
		fmt.Fprintf(&b, `{"event_id":%q,"user_id":"%s-%d","type":"t%d"}`, id, prefix, i, i%3)
	}
	b.WriteByte(']')
	return b.String(), ids
}

// waitInserted waits until the sink has inserted n rows, and fails when it
// inserts more or never gets there.
func waitInserted(t *testing.T, st *stack.Stack, n float64) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.GreaterOrEqual(c, st.Inserted(), n, "rows inserted")
	}, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, n, st.Inserted())
}

// openClickHouse connects to one server; the test closes it before
// stopping the stack (an open connection delays the server's stop), or
// cleanup does.
func openClickHouse(t *testing.T, addr string) driver.Conn {
	t.Helper()
	c, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	require.NoError(t, err)
	cc := &onceClosed{Conn: c}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// onceClosed closes a connection once: the driver's Close blocks when called twice.
type onceClosed struct {
	driver.Conn
	once sync.Once
	err  error
}

func (c *onceClosed) Close() error {
	c.once.Do(func() { c.err = c.Conn.Close() })
	return c.err
}

// gather returns every series of the named metric in reg. Like the helpers
// below it takes an assert.TestingT, so that an EventuallyWithT condition
// can pass its collect value.
func gather(t assert.TestingT, reg prometheus.Gatherer, name string) []*dto.Metric {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	mfs, err := reg.Gather()
	if !assert.NoError(t, err) {
		return nil
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func labelOf(m *dto.Metric, label string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == label {
			return lp.GetValue()
		}
	}
	return ""
}

// counters returns the named counter by the value of label, zeros left out.
func counters(t assert.TestingT, reg prometheus.Gatherer, name, label string) map[string]float64 {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
	out := map[string]float64{}
	for _, m := range gather(t, reg, name) {
		if v := m.GetCounter().GetValue(); v != 0 {
			out[labelOf(m, label)] += v
		}
	}
	return out
}

// histogram sums the sample counts and sums of every series of the named histogram.
func histogram(t *testing.T, reg prometheus.Gatherer, name string) (count uint64, sum float64) {
	t.Helper()
	ms := gather(t, reg, name)
	require.NotEmpty(t, ms, "no histogram %s", name)
	for _, m := range ms {
		count += m.GetHistogram().GetSampleCount()
		sum += m.GetHistogram().GetSampleSum()
	}
	return count, sum
}
