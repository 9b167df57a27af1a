// Package jaeger runs the real Jaeger v2 (all-in-one: OTLP receivers, the
// query API and UI, in-memory storage) for tests and the local stack: its
// binary found or built by gotools.Jaeger, a config file of its own with
// free loopback ports (never the well-known 4317, 4318 and 16686, which a
// Jaeger of the user's may hold), ready when both the query API and the
// OTLP/HTTP receiver answer, stopped by its process id.
package jaeger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
)

// Bounds of the server's own waits.
const (
	// ReadyTimeout bounds the wait for the query API and the OTLP
	// receiver after start (about a second here).
	ReadyTimeout = 30 * time.Second
	// StopTimeout bounds the wait for exit after SIGTERM; SIGKILL then.
	StopTimeout = 10 * time.Second
)

// Server is one Jaeger process.
type Server struct {
	// Dir holds the config file and the log.
	Dir string
	// OTLPGRPCPort and OTLPHTTPPort receive spans over OTLP.
	OTLPGRPCPort, OTLPHTTPPort int
	// QueryPort serves the UI and the HTTP query API (/api/traces/<id>);
	// QueryGRPCPort the gRPC query API.
	QueryPort, QueryGRPCPort int
	proc                     *proc.Process
}

// Start writes a config under dir for free loopback ports and runs bin
// (the jaeger binary, e.g. from gotools.Jaeger.Path) with it; it returns
// once the query API and the OTLP/HTTP receiver answer.
func Start(ctx context.Context, bin, dir string) (*Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("jaeger dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("jaeger dir: %w", err)
	}
	free, err := ports.Free(4)
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, OTLPGRPCPort: free[0], OTLPHTTPPort: free[1], QueryPort: free[2], QueryGRPCPort: free[3]}
	if err := os.WriteFile(s.configPath(), []byte(s.config()), 0o644); err != nil {
		return nil, fmt.Errorf("write jaeger config: %w", err)
	}
	cmd := exec.Command(bin, "--config", s.configPath())
	cmd.Dir = dir
	p, err := proc.Start(cmd, s.LogPath())
	if err != nil {
		return nil, fmt.Errorf("start jaeger: %w", err)
	}
	s.proc = p
	if err := s.waitReady(ctx); err != nil {
		_ = p.Stop(StopTimeout)
		return nil, fmt.Errorf("%w; log %s:\n%s", err, s.LogPath(), proc.Tail(s.LogPath(), 10))
	}
	return s, nil
}

func (s *Server) configPath() string { return filepath.Join(s.Dir, "jaeger.yaml") }

// LogPath is the file the process writes its output to.
func (s *Server) LogPath() string { return filepath.Join(s.Dir, "jaeger.log") }

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// config is the all-in-one configuration of Jaeger's own
// cmd/jaeger/internal/all-in-one.yaml cut to what Surge uses: OTLP in,
// memory storage, the query API and UI out. The collector's own metrics
// server (port 8888 by default) is off, as are the remote sampling, Jaeger
// and Zipkin receivers and the health, expvar and zpages extensions, which
// would each take a fixed port; the query service does not trace itself.
func (s *Server) config() string {
	return fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: %s
    grpc:
      endpoint: %s

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
      http:
        endpoint: %s

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`, hostPort(s.QueryPort), hostPort(s.QueryGRPCPort), hostPort(s.OTLPGRPCPort), hostPort(s.OTLPHTTPPort))
}

// probe is the readiness checks' client: no check waits without bound.
var probe = &http.Client{Timeout: time.Second}

// waitReady polls until the query API answers 200 and the OTLP/HTTP
// receiver answers at all (the collector starts its extensions, the query
// service among them, before its receivers).
func (s *Server) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(ReadyTimeout)
	last := errors.New("no answer")
	for {
		if last = s.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-s.proc.Exited():
			return fmt.Errorf("jaeger exited at start: %w", last)
		case <-ctx.Done():
			return fmt.Errorf("wait for jaeger: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jaeger not ready after %s: %w", ReadyTimeout, last)
		}
	}
}

func (s *Server) ready(ctx context.Context) error {
	for _, url := range []string{s.UIURL() + "/api/services", s.OTLPHTTPEndpoint() + "/v1/traces"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := probe.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		// The receiver answers a GET with 405: it runs.
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusMethodNotAllowed {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
	}
	return nil
}

// UIURL is the base URL of the UI and the HTTP query API.
func (s *Server) UIURL() string { return "http://" + hostPort(s.QueryPort) }

// OTLPHTTPEndpoint is the OTLP/HTTP endpoint, for OTEL_EXPORTER_OTLP_ENDPOINT.
func (s *Server) OTLPHTTPEndpoint() string { return "http://" + hostPort(s.OTLPHTTPPort) }

// OTelEnv are the standard variables that send a service's spans to this
// Jaeger over OTLP/HTTP (telemetry.SetupTracing reads them). They name
// the endpoint for traces alone too, as a user's own
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT would win over the general one.
func (s *Server) OTelEnv() map[string]string {
	return map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT":        s.OTLPHTTPEndpoint(),
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": s.OTLPHTTPEndpoint() + "/v1/traces",
		"OTEL_EXPORTER_OTLP_PROTOCOL":        "http/protobuf",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
	}
}

// PID is the process id, 0 once stopped.
func (s *Server) PID() int {
	if !s.proc.Running() {
		return 0
	}
	return s.proc.PID()
}

// Stop sends SIGTERM and waits for exit (SIGKILL after StopTimeout). The
// spans it held are gone: its storage is in memory. Stopping a stopped
// server does nothing.
func (s *Server) Stop() error {
	if err := s.proc.Stop(StopTimeout); err != nil {
		return fmt.Errorf("stop jaeger: %w", err)
	}
	return nil
}

// Span is one span as the HTTP query API (/api/traces/<id>) shows it.
type Span struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	ProcessID     string `json:"processID"`
	// Service is the service.name of the span's process.
	Service    string      `json:"-"`
	References []Reference `json:"references"`
	Tags       []Tag       `json:"tags"`
}

// Reference is a span's parent (CHILD_OF) or one of its OpenTelemetry
// span links, which Jaeger shows as FOLLOWS_FROM.
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// Tag is a span attribute; Value is a string, a float64 (every number
// type) or a bool.
type Tag struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Tag is the value of the span's tag key, nil when it has none.
func (s Span) Tag(key string) any {
	for _, t := range s.Tags {
		if t.Key == key {
			return t.Value
		}
	}
	return nil
}

// ErrNoTrace reports that the query API holds no span of a trace (yet).
var ErrNoTrace = errors.New("jaeger has no such trace")

// Trace reads the spans of trace id (32 hex digits) from the server's
// HTTP query API: ReadTrace at UIURL.
func (s *Server) Trace(ctx context.Context, id string) ([]Span, error) {
	return ReadTrace(ctx, s.UIURL(), id)
}

// ReadTrace reads the spans of trace id (32 hex digits) from the HTTP
// query API at base (a Jaeger's UI address), each with its service name;
// ErrNoTrace while Jaeger has none.
func ReadTrace(ctx context.Context, base, id string) ([]Span, error) {
	url := base + "/api/traces/" + id
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := queryClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get trace %s: %w", id, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("get trace %s: %w", id, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("trace %s: %w", id, ErrNoTrace)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get trace %s: %s: %s", id, resp.Status, body)
	}
	var answer struct {
		Data []struct {
			Spans     []Span `json:"spans"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return nil, fmt.Errorf("decode trace %s: %w", id, err)
	}
	var spans []Span
	for _, t := range answer.Data {
		for _, sp := range t.Spans {
			sp.Service = t.Processes[sp.ProcessID].ServiceName
			spans = append(spans, sp)
		}
	}
	if len(spans) == 0 {
		return nil, fmt.Errorf("trace %s: %w", id, ErrNoTrace)
	}
	return spans, nil
}

// queryClient reads traces: no read waits without bound.
var queryClient = &http.Client{Timeout: 10 * time.Second}
