package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// AdminConfig places the admin server.
type AdminConfig struct {
	// Addr is the listen address of /healthz, /readyz and /metrics.
	Addr string `yaml:"addr" env:"ADDR"`
}

// Validate reports every problem of the admin settings.
func (c AdminConfig) Validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("addr: %w", err)
	}
	return nil
}

// Admin serves /healthz (the process runs), /readyz (the service can do
// its work) and /metrics.
//
// Readiness is a set of named checks, each failing with a reason: the
// service is ready when none fails, and /readyz names every one that does
// ("nats: disconnected"), so an operator reads why without the logs.
type Admin struct {
	ln     net.Listener
	srv    *http.Server
	logger *zap.Logger

	mu sync.Mutex
	// failing maps a check to the reason it fails.
	failing map[string]string
}

// NewAdmin listens on addr; the caller runs it with Run.
func NewAdmin(addr string, reg *prometheus.Registry, logger *zap.Logger) (*Admin, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listen: %w", err)
	}
	a := &Admin{ln: ln, logger: logger, failing: map[string]string{CheckStarting: "starting"}}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if reasons := a.NotReadyReasons(); len(reasons) > 0 {
			http.Error(w, "not ready: "+strings.Join(reasons, "; "), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return a, nil
}

// Addr is the address the server listens on.
func (a *Admin) Addr() string { return a.ln.Addr().String() }

// CheckStarting fails from NewAdmin until the service's start-up is done,
// and again once it stops.
const CheckStarting = "lifecycle"

// NotReady makes /readyz fail with reason under the named check, until
// Ready(check).
func (a *Admin) NotReady(check, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failing[check] = reason
}

// Ready clears the named check.
func (a *Admin) Ready(check string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.failing, check)
}

// NotReadyReasons lists the failing checks as "check: reason", sorted;
// empty when the service is ready.
func (a *Admin) NotReadyReasons() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.failing))
	for check, reason := range a.failing {
		out = append(out, check+": "+reason)
	}
	slices.Sort(out)
	return out
}

// Close releases the listener of an admin server that never ran; after
// Run it does nothing.
func (a *Admin) Close() error {
	if err := a.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("admin close: %w", err)
	}
	return nil
}

// Run serves until ctx ends.
func (a *Admin) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(a.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.srv.Shutdown(shutdownCtx); err != nil {
		a.logger.Warn("admin shutdown", zap.Error(err))
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin serve: %w", err)
	}
	return nil
}

// Start serves in the background until the returned stop is called; stop
// returns what Run returned. Services stop the admin server last, so
// /metrics answers while their last work drains.
func (a *Admin) Start() (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	return func() error {
		cancel()
		return <-done
	}
}
