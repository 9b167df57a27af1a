package chaos

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// endDigest is an assert.TestingT that fails its test as t would, and
// repeats each failure in the test's last lines: a chaos run logs
// thousands of lines after a bound it broke, and a CI log is often read
// from its tail.
type endDigest struct {
	t    *testing.T
	mu   sync.Mutex
	msgs []string
}

// failuresAtEnd returns t's digest. Call it first in the test, so that
// its cleanup runs after all others.
func failuresAtEnd(t *testing.T) *endDigest {
	d := &endDigest{t: t}
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.msgs) > 0 {
			t.Logf("%d failure(s), repeated from above:\n%s", len(d.msgs), strings.Join(d.msgs, "\n"))
		}
	})
	return d
}

func (d *endDigest) Errorf(format string, args ...any) {
	d.t.Helper()
	msg := fmt.Sprintf(format, args...)
	d.mu.Lock()
	d.msgs = append(d.msgs, msg)
	d.mu.Unlock()
	d.t.Error(msg)
}

func (d *endDigest) Helper() { d.t.Helper() }

// keptOnFailure makes a directory for a run's data and logs that stays
// when the test fails (its path is logged) and goes when it passes, unless
// SURGE_CHAOS_KEEP is set (to read a passing run's logs). Call it before
// starting what writes there, so its cleanup runs after theirs.
func keptOnFailure(t *testing.T, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SURGE_CHAOS_KEEP") != "" {
			t.Logf("data and logs of the run kept in %s", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}
