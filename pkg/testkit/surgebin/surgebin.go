// Package surgebin builds the surge command for tests that run it as a
// user would (`surge up`, `surge status`, `surge query`).
package surgebin

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// Package is the surge command's import path.
const Package = "github.com/surge-events/surge/tools/cmd/surge"

// Build compiles the surge command into a temporary folder of the test
// and returns the binary's path; a failed build fails the test with the
// compiler's output. `go build` runs in the test's working directory,
// inside the source tree, so go.work applies.
func Build(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "surge")
	out, err := exec.Command("go", "build", "-o", bin, Package).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", Package, err, out)
	}
	return bin
}
