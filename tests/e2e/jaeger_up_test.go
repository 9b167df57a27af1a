package e2e

import (
	"context"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/jaeger"
	"github.com/surge-events/surge/pkg/testkit/jaeger/jaegertest"
	"github.com/surge-events/surge/pkg/testkit/surgebin"
)

// jaegerLine is the banner's Jaeger line: its UI address and pid.
var jaegerLine = regexp.MustCompile(`^  Jaeger +(http://127\.0\.0\.1:\d+) \(pid (\d+);`)

// TestLocalStackCommandWithJaeger runs `surge up --jaeger` as the README
// does: the banner names a Jaeger on a free port, a request with a sampled
// traceparent shows in it as spans of the four services, and Ctrl-C stops
// that Jaeger with the stack. tests/observability reads the trace's
// spans and links in detail.
func TestLocalStackCommandWithJaeger(t *testing.T) {
	jaegertest.Binary(t) // surge up finds the same binary
	bin := surgebin.Build(t)
	httpAddr := freeAddr(t)
	// Traces of this stack go to its own Jaeger, whatever the caller's
	// environment says (surge up inherits the test's).
	for _, v := range []string{"OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"} {
		t.Setenv(v, "")
	}
	up, lines := startSurgeUp(t, bin, t.TempDir(), false, "--jaeger", "--http", httpAddr, "--nats-port", "-1", "--mqtt-port", "-1")
	var ui string
	var pid int
	func() {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		for {
			select {
			case line, ok := <-lines:
				require.True(t, ok, "output ended before the banner")
				if m := jaegerLine.FindStringSubmatch(line); m != nil {
					ui = m[1]
					var err error
					pid, err = strconv.Atoi(m[2])
					require.NoError(t, err)
				}
				if strings.Contains(line, "Press Ctrl-C to stop.") {
					require.NotEmpty(t, ui, "no Jaeger line in the banner")
					return
				}
			case <-ctx.Done():
				t.Fatal("no banner within 90s")
			}
		}
	}()
	for _, well := range []string{":4317", ":4318", ":16686"} {
		require.False(t, strings.HasSuffix(ui, well), "Jaeger on the well-known port %s", well)
	}

	const tid = "2bd5e1f0a1b2c3d4e5f60718293a4b5c"
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, "http://"+httpAddr+"/v1/events",
		strings.NewReader(`[{"user_id":"u1","type":"page_view","properties":{"path":"/"}}]`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("traceparent", "00-"+tid+"-00f067aa0ba902b7-01")
	resp, err := client.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		spans, err := jaeger.ReadTrace(t.Context(), ui, tid)
		if !assert.NoError(c, err) {
			return
		}
		var got []string
		for _, s := range spans {
			got = append(got, s.Service+" "+strings.TrimRight(s.OperationName, "0123456789"))
		}
		sort.Strings(got)
		assert.Equal(c, []string{
			"surge-batcher batch",
			"surge-ingest POST /v1/events",
			"surge-ingest publish ingest.default",
			"surge-partitioner partition",
			"surge-partitioner publish events.shard.",
			"surge-sink sink insert",
		}, got)
	}, 30*time.Second, 100*time.Millisecond)

	require.NoError(t, up.Process.Signal(syscall.SIGINT))
	waitFor(t, lines, "stopped cleanly", 60*time.Second)
	done := make(chan error, 1)
	go func() { done <- up.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("surge up did not exit after Ctrl-C")
	}
	// surge up reaped its Jaeger before it exited.
	require.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "Jaeger (pid %d) outlived surge up", pid)
}
