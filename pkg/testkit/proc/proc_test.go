package proc_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/surge-events/surge/pkg/testkit/proc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs cmd with its log in a temporary folder and kills it when the
// test ends.
func start(t *testing.T, cmd *exec.Cmd) (*proc.Process, string) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "out.log")
	p, err := proc.Start(cmd, log)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Kill() })
	return p, log
}

// signalled is the signal that ended p, or 0.
func signalled(t *testing.T, p *proc.Process) syscall.Signal {
	t.Helper()
	st := p.ExitState()
	require.NotNil(t, st, "exit state once exited")
	ws := st.Sys().(syscall.WaitStatus)
	if !ws.Signaled() {
		return 0
	}
	return ws.Signal()
}

// TestStopEndsWithSIGTERM: a process that heeds SIGTERM exits within the
// grace period; it ran in its own process group.
func TestStopEndsWithSIGTERM(t *testing.T) {
	p, _ := start(t, exec.Command("sleep", "60"))
	require.NotZero(t, p.PID())
	pgid, err := syscall.Getpgid(p.PID())
	require.NoError(t, err)
	assert.Equal(t, p.PID(), pgid, "own process group")
	assert.True(t, p.Running())
	assert.False(t, p.Stopping())
	assert.Nil(t, p.ExitState(), "no exit state while it runs")

	require.NoError(t, p.Stop(time.Minute))
	assert.Equal(t, syscall.SIGTERM, signalled(t, p))
	assert.False(t, p.Running())
	assert.True(t, p.Stopping())
	require.NoError(t, p.Stop(time.Minute), "stop of an exited process")
	require.NoError(t, p.Kill(), "kill of an exited process")
}

// TestStopKillsAfterGrace: a process that ignores SIGTERM is SIGKILLed
// once the grace period has passed, and Stop says so.
func TestStopKillsAfterGrace(t *testing.T) {
	// exec keeps the ignored SIGTERM and the pid; "ready" says the trap is set.
	p, log := start(t, exec.Command("sh", "-c", `trap "" TERM; echo ready; exec sleep 60`))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		out, err := os.ReadFile(log)
		assert.NoError(c, err)
		assert.Equal(c, "ready\n", string(out))
	}, 10*time.Second, 10*time.Millisecond)

	err := p.Stop(100 * time.Millisecond)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "did not exit within 100ms of SIGTERM; killed")
	assert.Equal(t, syscall.SIGKILL, signalled(t, p))
	assert.False(t, p.Running())
}

// TestKill: SIGKILL, and Kill returns once the process is reaped.
func TestKill(t *testing.T) {
	p, _ := start(t, exec.Command("sleep", "60"))
	require.NoError(t, p.Kill())
	assert.Equal(t, syscall.SIGKILL, signalled(t, p))
	assert.False(t, p.Running())
	assert.True(t, p.Stopping())
	select {
	case <-p.Exited():
	default:
		t.Fatal("Exited is not closed after Kill")
	}
}

// TestExitOnItsOwn: a process that exits by itself closes Exited, keeps
// its exit code and its output in the log, and is not Stopping.
func TestExitOnItsOwn(t *testing.T) {
	p, log := start(t, exec.Command("sh", "-c", "echo out; echo err >&2; exit 3"))
	<-p.Exited()
	assert.False(t, p.Running())
	assert.False(t, p.Stopping())
	assert.Equal(t, 3, p.ExitState().ExitCode())
	out, err := os.ReadFile(log)
	require.NoError(t, err)
	assert.Equal(t, "out\nerr\n", string(out))
}

// TestStartErrors: a binary that is not there, or a log that cannot be
// opened, is an error and starts nothing; a nil Process has PID 0.
func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := proc.Start(exec.Command(filepath.Join(dir, "missing")), filepath.Join(dir, "out.log"))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = proc.Start(exec.Command("true"), filepath.Join(dir, "no", "out.log"))
	require.ErrorIs(t, err, os.ErrNotExist)
	assert.Contains(t, err.Error(), "log: ")
	var p *proc.Process
	assert.Zero(t, p.PID())
}
