package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/surge-events/surge/pkg/testkit/gotools"
	"github.com/surge-events/surge/pkg/testkit/jaeger"
)

// localJaeger is the Jaeger of `surge up --jaeger`: its own process on free
// ports, its config and log in a temporary folder (the stack's data folder
// may be emptied by --fresh while it runs; the spans are in memory anyway).
type localJaeger struct {
	*jaeger.Server
	dir string
}

// startJaeger runs the real Jaeger v2, built into the tools cache on first
// use, and points this process's OTEL_* variables at it: the local stack's
// tracer providers read them, and the cluster's service processes inherit
// them. Unless OTEL_TRACES_SAMPLER says otherwise every request is traced,
// not the default 1 in 100 of those without a sampled traceparent.
func startJaeger(ctx context.Context, logf func(format string, args ...any)) (*localJaeger, error) {
	cached, err := gotools.Jaeger.Cached()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(cached); errors.Is(err, os.ErrNotExist) && os.Getenv(gotools.Jaeger.Env) == "" {
		logf("building Jaeger %s into %s (once, about 4 minutes)", gotools.Jaeger.Version, cached)
	}
	bin, err := gotools.Jaeger.Path(ctx)
	if err != nil {
		return nil, fmt.Errorf("--jaeger: %w", err)
	}
	dir, err := os.MkdirTemp("", "surge-jaeger-")
	if err != nil {
		return nil, fmt.Errorf("--jaeger: %w", err)
	}
	s, err := jaeger.Start(ctx, bin, dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("--jaeger: %w", err)
	}
	env := s.OTelEnv()
	if os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		env["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
	}
	for k, v := range env {
		if err := os.Setenv(k, v); err != nil {
			_ = s.Stop()
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("--jaeger: set %s: %w", k, err)
		}
	}
	return &localJaeger{Server: s, dir: dir}, nil
}

// Stop stops Jaeger by its process id and removes its folder; nil does
// nothing, so a stack without --jaeger can call it too.
func (j *localJaeger) Stop() error {
	if j == nil {
		return nil
	}
	err := j.Server.Stop()
	if rerr := os.RemoveAll(j.dir); err == nil && rerr != nil {
		err = fmt.Errorf("remove jaeger folder: %w", rerr)
	}
	return err
}

// banner is the Jaeger line of the stack's banner, empty without --jaeger.
func (j *localJaeger) banner() string {
	if j == nil {
		return ""
	}
	return fmt.Sprintf("  Jaeger        %s (pid %d; traces: %s/api/traces/<trace id>; spans in over OTLP at %s)\n",
		j.UIURL(), j.PID(), j.UIURL(), j.OTLPHTTPEndpoint())
}
