package stack_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/tools/stack"
)

// holderEnv, when set, turns the test binary into a process that locks
// the folder it names, says "locked" on stdout and waits to be killed.
const holderEnv = "SURGE_TEST_LOCK_HOLDER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(holderEnv); dir != "" {
		if _, err := stack.Lock(dir); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		_, _ = io.Copy(io.Discard, os.Stdin) // until the parent kills it
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func inUse(dir string, pid int) string {
	return fmt.Sprintf("data folder %s is in use by process %d (lock %s): stop that stack or choose another folder",
		dir, pid, filepath.Join(dir, stack.LockFile))
}

func TestLockOnePerFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	first, err := stack.Lock(dir)
	require.NoError(t, err)
	pid, err := os.ReadFile(filepath.Join(dir, stack.LockFile))
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(os.Getpid())+"\n", string(pid))

	_, err = stack.Lock(dir)
	require.EqualError(t, err, inUse(dir, os.Getpid()))
	require.ErrorIs(t, err, stack.ErrInUse)
	var iu *stack.InUseError
	require.ErrorAs(t, err, &iu)
	require.Equal(t, os.Getpid(), iu.PID)
	require.ErrorIs(t, stack.RemoveData(dir), stack.ErrInUse, "data in use is not deleted")
	require.FileExists(t, filepath.Join(dir, stack.LockFile))

	require.NoError(t, first.Unlock())
	require.NoError(t, first.Unlock(), "a second Unlock does nothing")
	second, err := stack.Lock(dir)
	require.NoError(t, err)
	require.NoError(t, second.Unlock())
	require.NoError(t, stack.RemoveData(dir))
	require.NoDirExists(t, dir)
}

// TestLockReleasedWhenHolderKilled: a process holding the folder is
// SIGKILLed; its pid stays in the lock file, yet the kernel released the
// lock, so the next stack takes it at once.
func TestLockReleasedWhenHolderKilled(t *testing.T) {
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), holderEnv+"="+dir)
	stdin, err := child.StdinPipe()
	require.NoError(t, err)
	defer stdin.Close()
	stdout, err := child.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, child.Start())
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "locked\n", line)

	start := time.Now()
	_, err = stack.Lock(dir)
	require.EqualError(t, err, inUse(dir, child.Process.Pid))
	require.Less(t, time.Since(start), time.Second, "refused at once")

	require.NoError(t, child.Process.Signal(syscall.SIGKILL))
	err = child.Wait()
	killed = true
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "child: %v", err)
	require.Equal(t, syscall.SIGKILL, exit.Sys().(syscall.WaitStatus).Signal())
	stale, err := os.ReadFile(filepath.Join(dir, stack.LockFile))
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(child.Process.Pid), strings.TrimSpace(string(stale)), "the killed holder's pid is left behind")

	l, err := stack.Lock(dir)
	require.NoError(t, err, "a stale pid does not block")
	pid, err := os.ReadFile(filepath.Join(dir, stack.LockFile))
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(os.Getpid())+"\n", string(pid))
	require.NoError(t, l.Unlock())
}
