package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/surge-events/surge/pkg/testkit/surgebin"
)

// startSurgeUp runs `surge up args...` from bin in dir (this package's
// folder when empty), its stderr to the test's, and returns it with its
// stdout lines; lines nobody reads are dropped, and echo copies each to
// stderr as well. The reading goroutine ends with the process, which is
// killed when the test ends.
func startSurgeUp(t *testing.T, bin, dir string, echo bool, args ...string) (*exec.Cmd, <-chan string) {
	t.Helper()
	up := exec.Command(bin, append([]string{"up"}, args...)...)
	up.Dir = dir
	stdout, err := up.StdoutPipe()
	require.NoError(t, err)
	up.Stderr = os.Stderr
	require.NoError(t, up.Start())
	t.Cleanup(func() { _ = up.Process.Kill(); _ = up.Wait() })

	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if echo {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
			select {
			case lines <- sc.Text():
			default: // progress lines nobody reads are dropped
			}
		}
	}()
	return up, lines
}

// TestLocalStackCommand runs `surge up` as a user would, posts the README's
// curl body, reads it back with `surge query`, and stops it with Ctrl-C.
func TestLocalStackCommand(t *testing.T) {
	bin := surgebin.Build(t)

	dir := t.TempDir()
	httpAddr := freeAddr(t)
	// Run from a project folder with the default data folder (.surge,
	// relative), as the README's `go tool task up` does.
	up, lines := startSurgeUp(t, bin, dir, false, "--http", httpAddr, "--nats-port", "-1", "--mqtt-port", "-1")
	waitFor(t, lines, "Press Ctrl-C to stop.", 90*time.Second)

	body := `[{"user_id":"u1","type":"page_view","properties":{"path":"/"}}]`
	resp, err := client.Post("http://"+httpAddr+"/v1/events", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(answer))
	require.JSONEq(t, `{"accepted":1}`, string(answer))

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		q := exec.CommandContext(t.Context(), bin, "query", "SELECT type, user_id, count() FROM surge.events GROUP BY type, user_id")
		q.Dir = dir
		out, err := q.CombinedOutput()
		if assert.NoError(c, err, string(out)) {
			// One row, type page_view, user u1, stored once.
			assert.Regexp(c, `page_view\W+u1\W+1\b`, string(out))
		}
	}, 30*time.Second, 200*time.Millisecond)

	stopSurgeUp(t, up, lines, syscall.SIGINT)
}

// stopSurgeUp sends sig to surge up, waits for its "stopped cleanly" and
// for it to exit with status 0.
func stopSurgeUp(t *testing.T, up *exec.Cmd, lines <-chan string, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, up.Process.Signal(sig))
	waitFor(t, lines, "stopped cleanly", 60*time.Second)
	done := make(chan error, 1)
	go func() { done <- up.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("surge up did not exit after %s", sig)
	}
}

func waitFor(t *testing.T, lines <-chan string, want string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "output ended before %q", want)
			if strings.Contains(line, want) {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no %q within %s", want, timeout)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
