// Package jaegertest gives tests the real Jaeger: its binary, or a skip
// outside CI while it is not built, and a server stopped when the test ends.
package jaegertest

import (
	"errors"
	"os"
	"testing"

	"github.com/surge-events/surge/pkg/testkit/gotools"
	"github.com/surge-events/surge/pkg/testkit/jaeger"
)

// Binary is the jaeger binary: $SURGE_JAEGER, or the build .ci/run leaves
// in the tools cache. Outside CI (CI unset) a missing build skips the test,
// since building it takes minutes; in CI the test builds it if it must.
func Binary(t testing.TB) string {
	t.Helper()
	if os.Getenv(gotools.Jaeger.Env) == "" && os.Getenv("CI") == "" {
		p, err := gotools.Jaeger.Cached()
		if err != nil {
			t.Fatalf("jaeger: %v", err)
		}
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			t.Skipf("Jaeger %s is not built at %s: .ci/run builds it once (about 4 minutes), or set %s to a jaeger binary; CI always runs this test",
				gotools.Jaeger.Version, p, gotools.Jaeger.Env)
		}
	}
	bin, err := gotools.Jaeger.Path(t.Context())
	if err != nil {
		t.Fatalf("jaeger: %v", err)
	}
	return bin
}

// Start runs Jaeger from Binary with its config and log in a temporary
// folder of the test; it is stopped when the test ends.
func Start(t testing.TB) *jaeger.Server {
	t.Helper()
	s, err := jaeger.Start(t.Context(), Binary(t), t.TempDir())
	if err != nil {
		t.Fatalf("start jaeger: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return s
}
