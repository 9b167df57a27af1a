// Package gotools finds the real third-party programs Surge's tests drive
// (Prometheus' promtool, Jaeger), each a pinned release built from the Go
// module proxy once into <user cache>/surge-tools/<name>-<version>/, where
// .ci/run builds them too. A test asks for a tool with Tool.Path, which
// builds it there when it is missing (minutes, once), so a fresh clone
// needs nothing installed by hand; $<Tool.Env> points at another binary.
package gotools

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// Tool is one pinned program.
type Tool struct {
	// Name is the binary's file name, e.g. "promtool".
	Name string
	// Package is the Go package of its main, e.g.
	// "github.com/prometheus/prometheus/cmd/promtool".
	Package string
	// Version is the module version it is built at.
	Version string
	// Env names the variable that points at another binary.
	Env string
	// OwnModule builds the tool as a Go tool dependency of a module of
	// its own (go get -tool, then go build) instead of `go install
	// pkg@version`, which refuses a module with replace directives.
	OwnModule bool
}

// The tools the tests drive.
var (
	// Promtool checks and unit-tests Prometheus rules and configs.
	Promtool = Tool{Name: "promtool", Package: "github.com/prometheus/prometheus/cmd/promtool", Version: "v0.316.0", Env: "SURGE_PROMTOOL"}
	// Jaeger is Jaeger v2 (module version v1.75.0 is the 2.x release):
	// OTLP in, the query API and UI out, in-memory storage by default.
	Jaeger = Tool{Name: "jaeger", Package: "github.com/jaegertracing/jaeger/cmd/jaeger", Version: "v1.75.0", Env: "SURGE_JAEGER", OwnModule: true}
)

// Dir is the cache folder the tool is built into.
func (t Tool) Dir() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("user cache dir: %w", err)
	}
	return filepath.Join(cache, "surge-tools", t.Name+"-"+t.Version), nil
}

// Cached is the path of the tool's binary in the cache, built or not.
func (t Tool) Cached() (string, error) {
	dir, err := t.Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, t.Name), nil
}

// builds serialises the builds of one process: two tests asking for the
// same tool build it once.
var builds sync.Mutex

// Path is the binary to run: $<Env> when set, else the cached build,
// which it builds first when missing.
func (t Tool) Path(ctx context.Context) (string, error) {
	if t.Env != "" {
		if p := os.Getenv(t.Env); p != "" {
			return p, nil
		}
	}
	p, err := t.Cached()
	if err != nil {
		return "", err
	}
	builds.Lock()
	defer builds.Unlock()
	if _, err := os.Stat(p); err == nil {
		return p, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%s: %w", t.Name, err)
	}
	if err := t.Build(ctx); err != nil {
		return "", err
	}
	return p, nil
}

// Build builds the tool into its cache folder, outside any workspace so
// it gets its own module graph, as .ci/run does.
func (t Tool) Build(ctx context.Context) error {
	dir, err := t.Dir()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%s cache folder: %w", t.Name, err)
	}
	run := func(wd string, env []string, args ...string) error {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = wd
		cmd.Env = append(append(os.Environ(), "GOWORK=off"), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s %s: go %v: %w\n%s", t.Name, t.Version, args, err, out)
		}
		return nil
	}
	if !t.OwnModule {
		return run(os.TempDir(), []string{"GOBIN=" + dir}, "install", t.Package+"@"+t.Version)
	}
	mod, err := os.MkdirTemp("", "surge-tool-"+t.Name)
	if err != nil {
		return fmt.Errorf("%s build module: %w", t.Name, err)
	}
	defer os.RemoveAll(mod)
	// The binary is written under a temporary name and renamed, so a
	// build cut short never leaves a binary Path would take as built.
	tmp := filepath.Join(dir, "."+t.Name+".partial")
	for _, args := range [][]string{
		{"mod", "init", "surge-tools/" + t.Name},
		{"get", "-tool", t.Package + "@" + t.Version},
		{"build", "-o", tmp, t.Package},
	} {
		if err := run(mod, nil, args...); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, filepath.Join(dir, t.Name)); err != nil {
		return fmt.Errorf("%s: %w", t.Name, err)
	}
	return nil
}
