package status

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that a Collector leaves no goroutine behind once closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
