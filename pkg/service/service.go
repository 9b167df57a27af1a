// Package service holds what every Surge service shares: the main loop,
// the admin HTTP server (/healthz, /readyz, /metrics) and the NATS
// connection.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/telemetry"
)

// Deps are the things a service is given rather than configured with.
type Deps struct {
	Logger         *zap.Logger
	Registry       *prometheus.Registry
	TracerProvider trace.TracerProvider
}

// Config is what Main needs of a service's configuration.
type Config interface {
	Validate() error
	Logging() telemetry.LogConfig
}

// Main loads cfg (a pointer to a struct holding the defaults), handles
// --validate, builds the dependencies and runs the service until SIGINT or
// SIGTERM. It returns the process exit code; only main calls os.Exit.
func Main(name string, cfg Config, run func(ctx context.Context, deps Deps) error) int {
	return MainArgs(name, os.Args[1:], os.Stdout, os.Stderr, cfg, run)
}

// MainArgs is Main with explicit arguments and outputs, for tests.
func MainArgs(name string, args []string, stdout, stderr io.Writer, cfg Config, run func(ctx context.Context, deps Deps) error) int {
	opts, err := config.Load(name, args, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	if opts.PrintConfig {
		out, err := yaml.Marshal(cfg)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return 1
		}
		_, _ = stdout.Write(out)
		return 0
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", name, err)
		return 2
	}
	if opts.ValidateOnly {
		fmt.Fprintf(stdout, "%s: configuration is valid\n", name)
		return 0
	}
	logger, err := telemetry.NewLogger(cfg.Logging(), name)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	defer func() { _ = logger.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// Traces name the service surge-<name> unless OTEL_SERVICE_NAME says otherwise.
	tp, shutdownTracing, err := telemetry.SetupTracing(ctx, "surge-"+name)
	if err != nil {
		logger.Error("set up tracing", zap.Error(err))
		return 1
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	logger.Info("starting")
	err = run(ctx, Deps{Logger: logger, Registry: reg, TracerProvider: tp})

	flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if terr := shutdownTracing(flushCtx); terr != nil {
		logger.Warn("flush traces", zap.Error(terr))
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("stopped", zap.Error(err))
		return 1
	}
	logger.Info("stopped")
	return 0
}
