package chaos

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// proc is one OS process of the pipeline that the test starts, kills with
// SIGKILL and starts again on the same ports and data.
type proc struct {
	name    string
	bin     string
	args    []string
	env     []string
	logPath string
	// ready is polled after a start; empty means "the process runs".
	ready string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *proc) start(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	fmt.Fprintf(f, "\n===== start %s at %s =====\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// If the test binary dies, its children die with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start(), p.name)
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

// waitReady polls the ready URL until it answers 200.
func (p *proc) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	if p.ready == "" {
		return
	}
	client := &http.Client{Timeout: time.Second}
	require.Eventually(t, func() bool {
		resp, err := client.Get(p.ready)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, timeout, 50*time.Millisecond, "%s not ready; log: %s", p.name, p.logPath)
}

// pid is the running process's id, 0 when stopped.
func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// stop sends sig and waits for the exit (SIGKILL after 30 s).
func (p *proc) stop(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

// tail is the end of the process's log, for failure messages.
func (p *proc) tail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(string(bytes.TrimSpace(data)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// build compiles the nats-server and the four services into dir.
func build(t *testing.T, dir string) map[string]string {
	t.Helper()
	pkgs := map[string]string{
		"nats-server": "github.com/nats-io/nats-server/v2",
		"ingest":      "github.com/surge-events/surge/services/ingest/cmd/ingest",
		"partitioner": "github.com/surge-events/surge/services/partitioner/cmd/partitioner",
		"batcher":     "github.com/surge-events/surge/services/batcher/cmd/batcher",
		"sink":        "github.com/surge-events/surge/services/sink/cmd/sink",
	}
	bins := map[string]string{}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for name, pkg := range pkgs {
		// go build names a binary after the package's last path element,
		// skipping a major version suffix: nats-server, ingest, ...
		bins[name] = filepath.Join(dir, name)
		args = append(args, pkg)
	}
	cmd := exec.Command("go", args...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bins
}
