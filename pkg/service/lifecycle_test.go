package service

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
)

func testDeps(t *testing.T) Deps {
	return Deps{Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider()}
}

func testSpec(url string) Spec {
	c := DefaultCommon("127.0.0.1:0")
	c.NATS = NATSConfig{URL: url, ConnectTimeout: 10 * time.Second}
	return Spec{Name: "test", Common: c}
}

// startNATS runs an embedded JetStream server on port (-1: a free one)
// with its store in dir.
func startNATS(t *testing.T, port int, dir string) string {
	t.Helper()
	s, err := natsserver.Start(natsserver.Options{Host: "127.0.0.1", Port: port, StoreDir: dir})
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s.ClientURL()
}

// closedURL is a NATS URL nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return "nats://" + addr
}

var readyClient = &http.Client{Timeout: 5 * time.Second}

// readyz returns the status and body of /readyz.
func readyz(addr string) (int, string, error) {
	resp, err := readyClient.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// assertReadyz polls /readyz until it answers code with a body holding want.
func assertReadyz(t *testing.T, addr string, code int, want string) {
	t.Helper()
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		got, body, err := readyz(addr)
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, code, got)
		assert.Contains(c, body, want)
	}, 15*time.Second, 20*time.Millisecond)
}

func TestDepsValidate(t *testing.T) {
	full := testDeps(t)
	tests := []struct {
		name string
		deps Deps
		want []string
	}{
		{name: "all given", deps: full},
		{name: "none", deps: Deps{}, want: []string{"logger is required", "registry is required", "tracer provider is required"}},
		{name: "no registry", deps: Deps{Logger: full.Logger, TracerProvider: full.TracerProvider}, want: []string{"registry is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.deps.Validate()
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
			_, err = NewHost(testSpec("nats://127.0.0.1:1"), tt.deps)
			require.Error(t, err, "NewHost refuses missing dependencies")
		})
	}
}

func TestCloseWithoutRunReleasesTheAdminPort(t *testing.T) {
	h, err := NewHost(testSpec(closedURL(t)), testDeps(t))
	require.NoError(t, err)
	addr := h.AdminAddr()
	require.NoError(t, h.Close())
	require.NoError(t, h.Close(), "Close is idempotent")
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the admin port is free again")
	require.NoError(t, ln.Close())
}

func TestCancelDuringStartIsACleanStop(t *testing.T) {
	spec := testSpec(closedURL(t))
	spec.NATS.ConnectTimeout = time.Minute
	h, err := NewHost(spec, testDeps(t))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	bodyRan := make(chan struct{})
	go func() {
		done <- h.Run(ctx, func(context.Context, Conn) error { close(bodyRan); return nil })
	}()
	// Connecting: /readyz names the check and why.
	assertReadyz(t, h.AdminAddr(), http.StatusServiceUnavailable, "nats: connecting")
	cancel()
	require.NoError(t, <-done)
	select {
	case <-bodyRan:
		t.Fatal("the body ran without NATS")
	default:
	}
}

func TestConnectTimeoutIsAnError(t *testing.T) {
	spec := testSpec(closedURL(t))
	spec.NATS.ConnectTimeout = 300 * time.Millisecond
	h, err := NewHost(spec, testDeps(t))
	require.NoError(t, err)
	err = h.Run(t.Context(), func(context.Context, Conn) error { return nil })
	require.ErrorContains(t, err, "connect to nats")
}

func TestRunServesBodyThenDrains(t *testing.T) {
	url := startNATS(t, -1, t.TempDir())
	h, err := NewHost(testSpec(url), testDeps(t))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	type seen struct {
		streams []string
		code    int
		body    string
		err     error
	}
	got := make(chan seen, 1)
	err = h.Run(ctx, func(ctx context.Context, conn Conn) error {
		var s seen
		for _, name := range []string{streams.Ingest, streams.Events, streams.Batches, streams.DeadLetter, streams.Problems} {
			if _, err := conn.JS.Stream(ctx, name); err == nil {
				s.streams = append(s.streams, name)
			}
		}
		s.code, s.body, s.err = readyz(h.AdminAddr())
		got <- s
		cancel()
		<-ctx.Done()
		return ctx.Err() // passing the shutdown on is a clean stop
	})
	require.NoError(t, err)
	s := <-got
	require.NoError(t, s.err)
	require.Equal(t, []string{streams.Ingest, streams.Events, streams.Batches, streams.DeadLetter, streams.Problems}, s.streams)
	require.Equal(t, http.StatusOK, s.code)
	require.Equal(t, "ready\n", s.body)
	_, _, err = readyz(h.AdminAddr())
	require.Error(t, err, "the admin server stops with Run")
	require.Error(t, h.Run(t.Context(), nil), "Run runs once")
}

func TestBodyErrorIsReturned(t *testing.T) {
	url := startNATS(t, -1, t.TempDir())
	h, err := NewHost(testSpec(url), testDeps(t))
	require.NoError(t, err)
	boom := errors.New("boom")
	err = h.Run(t.Context(), func(context.Context, Conn) error { return boom })
	require.ErrorIs(t, err, boom)
}

// A NATS server that comes back empty (a new node, a lost store) gets the
// streams again before the service calls itself ready.
func TestReadinessFollowsNATSAndStreamsComeBack(t *testing.T) {
	s, err := natsserver.Start(natsserver.Options{Host: "127.0.0.1", Port: -1, StoreDir: t.TempDir()})
	require.NoError(t, err)
	port := s.Addr().(*net.TCPAddr).Port
	h, err := NewHost(testSpec(s.ClientURL()), testDeps(t))
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	jsc := make(chan jetstream.JetStream, 1)
	done := make(chan error, 1)
	go func() {
		done <- h.Run(ctx, func(ctx context.Context, conn Conn) error {
			jsc <- conn.JS
			<-ctx.Done()
			return nil
		})
	}()
	js := <-jsc
	assertReadyz(t, h.AdminAddr(), http.StatusOK, "ready")

	s.Shutdown()
	s.WaitForShutdown()
	assertReadyz(t, h.AdminAddr(), http.StatusServiceUnavailable, "nats: disconnected")

	startNATS(t, port, t.TempDir()) // same port, empty store
	assertReadyz(t, h.AdminAddr(), http.StatusOK, "ready")
	info, err := js.Stream(t.Context(), streams.Batches)
	require.NoError(t, err, "streams ensured on the new server")
	require.Equal(t, streams.Batches, info.CachedInfo().Config.Name)

	cancel()
	require.NoError(t, <-done)
}

func TestNotReadyReasonsAreSortedAndCleared(t *testing.T) {
	a, err := NewAdmin("127.0.0.1:0", prometheus.NewRegistry(), zaptest.NewLogger(t))
	require.NoError(t, err)
	stop := a.Start()
	defer func() { require.NoError(t, stop()) }()
	a.Ready(CheckStarting)
	code, body, err := readyz(a.Addr())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ready\n", body)

	a.NotReady("shard 3", "no progress for 30s")
	a.NotReady("nats", "disconnected")
	code, body, err = readyz(a.Addr())
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "not ready: nats: disconnected; shard 3: no progress for 30s", strings.TrimSpace(body))

	a.Ready("nats")
	a.Ready("shard 3")
	code, _, err = readyz(a.Addr())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
}

func TestCommonValidateNamesSections(t *testing.T) {
	c := DefaultCommon("nope")
	c.NATS.URL = ""
	c.Streams.Replicas = 0
	err := c.Validate()
	require.Equal(t, "nats: url is required\nstreams: replicas must be 1 to 5, got 0\nadmin: addr: address nope: missing port in address", err.Error())
	require.NoError(t, DefaultCommon(":8081").Validate())
}
