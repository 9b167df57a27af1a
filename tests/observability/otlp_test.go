package observability

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/surge-events/surge/pkg/telemetry"
	"github.com/surge-events/surge/tools/stack"
)

// collector keeps the spans OTLP exporters send it, by service.name.
type collector struct {
	mu    sync.Mutex
	spans map[string][]*tracepb.Span
}

func (c *collector) add(req *coltracepb.ExportTraceServiceRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.spans == nil {
		c.spans = map[string][]*tracepb.Span{}
	}
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			c.spans[service] = append(c.spans[service], ss.GetSpans()...)
		}
	}
}

// names returns the names of the spans of trace tid, by service.
func (c *collector) names(tid trace.TraceID) map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for service, spans := range c.spans {
		for _, s := range spans {
			if trace.TraceID(s.GetTraceId()) == tid {
				out[service] = append(out[service], s.GetName())
			}
		}
	}
	for _, names := range out {
		slices.Sort(names)
	}
	return out
}

// ServeHTTP is an OTLP/HTTP receiver of protobuf-encoded traces.
func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want POST /v1/traces of application/x-protobuf", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.add(&req)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// grpcCollector is an OTLP/gRPC receiver.
type grpcCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	c *collector
}

func (g grpcCollector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	g.c.add(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// setOTEL points the standard variables at endpoint, sampling everything
// and exporting every 50 ms.
func setOTEL(t *testing.T, endpoint, protocol string) {
	t.Helper()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	t.Setenv("OTEL_SDK_DISABLED", "")
}

// TestOTLPExportNamesEachService runs the pipeline with each service's
// tracer provider built by telemetry.SetupTracing from OTEL_* variables,
// as service.Main builds it, and checks that one request's spans reach an
// OTLP/HTTP receiver under the four service names.
func TestOTLPExportNamesEachService(t *testing.T) {
	var c collector
	srv := httptest.NewServer(&c)
	t.Cleanup(srv.Close)
	setOTEL(t, srv.URL, "http/protobuf")

	providers := map[string]trace.TracerProvider{}
	for _, name := range []string{"ingest", "partitioner", "batcher", "sink"} {
		tp, shutdown, err := telemetry.SetupTracing(t.Context(), "surge-"+name)
		require.NoError(t, err)
		// t.Context() has ended when cleanups run.
		t.Cleanup(func() { require.NoError(t, shutdown(context.Background())) })
		providers[name] = tp
	}
	st := startStack(t, stack.Options{TracerProviders: func(name string) trace.TracerProvider { return providers[name] }})

	tid := trace.TraceID{0x07, 0x1b, 0xe5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
	body, _ := events("otlp", 1) // one event: one shard, one batch
	require.Equal(t, http.StatusAccepted, post(t, st, body, "traceparent", traceparent(tid, true)))

	want := map[string][]string{
		"surge-ingest":      {"POST /v1/events", "publish ingest.default"},
		"surge-partitioner": {"partition", "publish events.shard.X"},
		"surge-batcher":     {"batch"},
		"surge-sink":        {"sink insert"},
	}
	require.EventuallyWithT(t, func(collect *assert.CollectT) {
		got := c.names(tid)
		// The shard the event hashes to is not the point here.
		for i, name := range got["surge-partitioner"] {
			if strings.HasPrefix(name, "publish events.shard.") {
				got["surge-partitioner"][i] = "publish events.shard.X"
			}
		}
		assert.Equal(collect, want, got, "span names by service")
	}, 20*time.Second, 20*time.Millisecond)
}

// TestOTLPExportOverGRPC checks that OTEL_EXPORTER_OTLP_PROTOCOL=grpc
// sends spans to an OTLP/gRPC receiver.
func TestOTLPExportOverGRPC(t *testing.T) {
	var c collector
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, grpcCollector{c: &c})
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	setOTEL(t, "http://"+ln.Addr().String(), "grpc")

	tp, shutdown, err := telemetry.SetupTracing(t.Context(), "surge-sink")
	require.NoError(t, err)
	_, span := tp.Tracer("test").Start(t.Context(), "sink insert")
	tid := span.SpanContext().TraceID()
	span.End()
	require.NoError(t, shutdown(t.Context())) // flushes
	require.Equal(t, map[string][]string{"surge-sink": {"sink insert"}}, c.names(tid))
}
