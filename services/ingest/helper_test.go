package ingest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
)

// harness is one ingest service in front of one embedded JetStream server.
type harness struct {
	t        *testing.T
	ns       *server.Server
	storeDir string
	svc      *Service
	spans    *tracetest.SpanRecorder
	client   *http.Client
	js       jetstream.JetStream // the test's own connection, to inspect streams
	stop     func() error        // cancels Run and returns its error
}

func startNATS(t *testing.T, port int, storeDir string) *server.Server {
	t.Helper()
	ns, err := natsserver.Start(natsserver.Options{Port: port, StoreDir: storeDir})
	require.NoError(t, err)
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// testConfig is the default configuration on free local ports, with small
// streams and a short publish timeout.
func testConfig(natsURL string) Config {
	cfg := DefaultConfig()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.NATS.URL = natsURL
	cfg.NATS.ConnectTimeout = 5 * time.Second
	cfg.Streams.MaxBytes = 64 << 20
	cfg.Ingest.PublishTimeout = time.Second
	cfg.HTTP.WriteTimeout = 10 * time.Second
	cfg.HTTP.ShutdownTimeout = 5 * time.Second
	return cfg
}

// start runs a NATS server and an ingest service configured by
// testConfig then mutate, and waits until the service is ready.
func start(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, storeDir: t.TempDir(), spans: tracetest.NewSpanRecorder()}
	h.ns = startNATS(t, -1, h.storeDir)

	cfg := testConfig(h.ns.ClientURL())
	if mutate != nil {
		mutate(&cfg)
	}
	tp := trace.NewTracerProvider(trace.WithSpanProcessor(h.spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	svc, err := New(cfg, service.Deps{Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: tp})
	require.NoError(t, err)
	h.svc = svc

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	stopped := false
	var runErr error
	h.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = errors.New("run did not return within 15s of cancel")
			}
		}
		return runErr
	}
	t.Cleanup(func() { require.NoError(t, h.stop()) })

	transport := &http.Transport{}
	h.client = &http.Client{Transport: transport, Timeout: 20 * time.Second}
	t.Cleanup(transport.CloseIdleConnections)

	nc, err := nats.Connect(h.ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	h.js, err = jetstream.New(nc)
	require.NoError(t, err)

	h.waitReady(true)
	return h
}

// waitReady waits until /readyz answers 200 (want) or 503 (!want).
func (h *harness) waitReady(want bool) {
	h.t.Helper()
	wantCode := http.StatusOK
	if !want {
		wantCode = http.StatusServiceUnavailable
	}
	assert.EventuallyWithT(h.t, func(c *assert.CollectT) {
		code, body, err := h.admin("/readyz")
		if assert.NoError(c, err) {
			assert.Equal(c, wantCode, code, body)
		}
	}, 10*time.Second, 20*time.Millisecond)
}

// admin GETs a path of the admin server. It only returns errors, so it
// may run inside an EventuallyWithT condition.
func (h *harness) admin(path string) (int, string, error) {
	resp, err := h.client.Get("http://" + h.svc.AdminAddr() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("read %s: %w", path, err)
	}
	return resp.StatusCode, string(b), nil
}

// response is an answer of the event API, its JSON body decoded.
type response struct {
	status     int
	header     http.Header
	accepted   acceptedBody
	errorBody  errorBody
	rawBody    string
	receivedAt [2]time.Time // bounds of when the service received it
}

// do sends a request to the event API; headers may hold Content-Type.
func (h *harness) do(method, path string, headers map[string]string, body io.Reader) response {
	h.t.Helper()
	r, err := h.send(method, path, headers, body)
	require.NoError(h.t, err)
	return r
}

// send is do returning its problems as an error, for use off the test
// goroutine or inside an EventuallyWithT condition.
func (h *harness) send(method, path string, headers map[string]string, body io.Reader) (response, error) {
	req, err := http.NewRequest(method, "http://"+h.svc.Addr()+path, body)
	if err != nil {
		return response{}, err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	before := time.Now().UTC().Truncate(time.Microsecond)
	resp, err := h.client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("read body: %w", err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, rawBody: string(raw), receivedAt: [2]time.Time{before, time.Now().UTC()}}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		return r, fmt.Errorf("content type %q, body %s", ct, raw)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if resp.StatusCode == http.StatusAccepted {
		if err := dec.Decode(&r.accepted); err != nil {
			return r, fmt.Errorf("decode %s: %w", raw, err)
		}
		return r, nil
	}
	if err := dec.Decode(&r.errorBody); err != nil {
		return r, fmt.Errorf("decode %s: %w", raw, err)
	}
	if r.errorBody.Error == "" {
		return r, fmt.Errorf("error body without a message: %s", raw)
	}
	return r, nil
}

// post sends body to POST /v1/events as JSON.
func (h *harness) post(body string, headers ...string) response {
	h.t.Helper()
	hdr := map[string]string{"Content-Type": "application/json"}
	for i := 0; i+1 < len(headers); i += 2 {
		hdr[headers[i]] = headers[i+1]
	}
	return h.do(http.MethodPost, EventsPath, hdr, bytes.NewBufferString(body))
}

func (h *harness) streamMsgs() uint64 {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, streams.Ingest)
	require.NoError(h.t, err)
	info, err := s.Info(ctx)
	require.NoError(h.t, err)
	return info.State.Msgs
}

// stored returns every INGEST message.
func (h *harness) stored() []*jetstream.RawStreamMsg {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, streams.Ingest)
	require.NoError(h.t, err)
	info, err := s.Info(ctx)
	require.NoError(h.t, err)
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(h.t, err)
		out = append(out, m)
	}
	return out
}

func decode(t *testing.T, m *jetstream.RawStreamMsg) []event.Event {
	t.Helper()
	events, err := event.Decode(m.Data)
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(len(events)), m.Header.Get(streams.HeaderRows))
	return events
}

func gzipped(t *testing.T, s string) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err := zw.Write([]byte(s))
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return &buf
}

// restartNATS starts a new server on port and the store of the one the
// test shut down; the test's cleanup stops it.
func (h *harness) restartNATS(port int) {
	h.t.Helper()
	h.ns = startNATS(h.t, port, h.storeDir)
}

// port is the port of a server's client URL.
func port(t *testing.T, ns *server.Server) int {
	t.Helper()
	addr := ns.Addr().(*net.TCPAddr)
	return addr.Port
}
