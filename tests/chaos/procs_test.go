package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	testkitproc "github.com/surge-events/surge/pkg/testkit/proc"
)

// proc is one OS process of the pipeline that the test starts, kills with
// SIGKILL and starts again on the same ports and data, run by
// testkit/proc. Its methods return errors rather than fail the test: the
// fault schedule calls them off the test goroutine.
type proc struct {
	name    string
	bin     string
	args    []string
	env     []string
	logPath string
	// ready is polled after a start; empty means "the process runs".
	ready string

	mu sync.Mutex
	// p is the running process, nil while stopped.
	p *testkitproc.Process
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	_, err = fmt.Fprintf(f, "\n===== start %s at %s =====\n", p.name, time.Now().Format(time.RFC3339Nano))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	started, err := testkitproc.Start(cmd, p.logPath)
	if err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.p = started
	return nil
}

// waitReady polls the ready URL until it answers 200, for at most timeout.
func (p *proc) waitReady(ctx context.Context, timeout time.Duration) error {
	if p.ready == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	last := errors.New("no answer yet")
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.ready, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s", resp.Status)
		} else {
			last = err
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("%s not ready within %s (last: %v); log: %s", p.name, timeout, last, p.logPath)
		}
	}
}

// pid is the running process's id, 0 when stopped.
func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.p.PID()
}

// stop ends the process with SIGKILL, or with sig and SIGKILL after 30 s,
// and waits for the exit.
func (p *proc) stop(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return
	}
	if sig == syscall.SIGKILL {
		_ = p.p.Kill()
	} else {
		_ = p.p.StopWith(sig, 30*time.Second)
	}
	p.p = nil
}

// freeze stops the process with SIGSTOP and returns once the kernel reports
// it stopped: from then on it runs no more code until thaw.
func (p *proc) freeze() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return fmt.Errorf("freeze %s: not running", p.name)
	}
	if err := p.p.Signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("freeze %s: %w", p.name, err)
	}
	pid := p.p.PID()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, err := stopped(pid)
		if err != nil {
			return fmt.Errorf("freeze %s: %w", p.name, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("freeze %s: not stopped 5s after SIGSTOP", p.name)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// stopped reports whether every thread of process pid is stopped: a Go
// process has several, and the group stop reaches them one by one.
func stopped(pid int) (bool, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, task := range tasks {
		data, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread has exited
		}
		if err != nil {
			return false, err
		}
		// "pid (comm) S ...": the state follows the last ')', as comm may hold one.
		i := bytes.LastIndexByte(data, ')')
		if i < 0 || i+2 >= len(data) {
			return false, fmt.Errorf("unexpected %s/stat: %q", task.Name(), data)
		}
		if state := data[i+2]; state != 'T' && state != 't' {
			return false, nil
		}
	}
	return true, nil
}

// thaw resumes a frozen process with SIGCONT.
func (p *proc) thaw() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return fmt.Errorf("thaw %s: not running", p.name)
	}
	if err := p.p.Signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("thaw %s: %w", p.name, err)
	}
	return nil
}

// tail is the end of the process's log, for failure messages.
func (p *proc) tail(n int) string { return testkitproc.Tail(p.logPath, n) }

// startLoad runs load on a goroutine of its own: stopIssuing ends its
// issue context (no new requests), the test's end its abort context too
// (the requests in flight), and the test waits for it to return, which
// done tells.
func startLoad(t *testing.T, load func(issue, abort context.Context)) (stopIssuing context.CancelFunc, done <-chan struct{}) {
	t.Helper()
	issue, stopIssuing := context.WithCancel(t.Context())
	abort, stopAll := context.WithCancel(t.Context())
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		load(issue, abort)
	}()
	t.Cleanup(func() {
		stopIssuing()
		stopAll()
		<-loadDone
	})
	return stopIssuing, loadDone
}

// sleep waits d or until ctx ends, whichever comes first; it returns
// ctx.Err() when ctx ended.
func sleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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

// TestProcFreeze checks the freeze the sink-during-insert fault relies on:
// every thread stopped when freeze returns, running again after thaw.
func TestProcFreeze(t *testing.T) {
	bin, err := exec.LookPath("sleep")
	require.NoError(t, err)
	p := &proc{name: "sleep", bin: bin, args: []string{"60"}, logPath: filepath.Join(t.TempDir(), "sleep.log")}
	require.NoError(t, p.start())
	t.Cleanup(func() { p.stop(syscall.SIGKILL) })

	require.NoError(t, p.freeze())
	frozen, err := stopped(p.pid())
	require.NoError(t, err)
	require.True(t, frozen, "stopped after freeze")

	require.NoError(t, p.thaw())
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		frozen, err := stopped(p.pid())
		assert.NoError(c, err)
		assert.False(c, frozen, "running after thaw")
	}, 5*time.Second, time.Millisecond)
}
