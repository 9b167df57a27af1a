// Package proc runs one child process for the test harnesses and the local
// stack: the process in its own process group (a Ctrl-C in a terminal
// reaches only the parent, which then stops its children in order), killed
// should the parent's thread die, its output appended to a log file, and
// reaped by a goroutine of its own, so a caller can wait for the exit
// (Exited), end it with SIGTERM and a grace period (Stop) or SIGKILL (Kill).
package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Process is one started child process. Its methods are safe for
// concurrent use.
type Process struct {
	cmd *exec.Cmd
	// exited closes once the process has exited and was reaped.
	exited chan struct{}
	// stopping is set once Stop or Kill was called.
	stopping atomic.Bool
}

// Start starts cmd in its own process group, with Pdeathsig SIGKILL, its
// stdout and stderr appended to logPath (created when missing). The log
// file is closed when the process exits. Signals go to the process alone,
// not to its group.
func Start(cmd *exec.Cmd, logPath string) (*Process, error) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	p := &Process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(p.exited)
	}()
	return p, nil
}

// PID is the process id; 0 for a nil Process, so an owner's "no process"
// reads as PID 0.
func (p *Process) PID() int {
	if p == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited closes once the process has exited and was reaped.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stopping reports whether Stop or Kill was called: the process is on
// its way out, or gone.
func (p *Process) Stopping() bool { return p.stopping.Load() }

// ExitState is how the process exited; nil while it runs.
func (p *Process) ExitState() *os.ProcessState {
	if p.Running() {
		return nil
	}
	return p.cmd.ProcessState
}

// Stop sends SIGTERM and waits for the process to exit. A process still
// running after grace is sent SIGKILL and waited for; Stop then returns an
// error saying so. A process that has exited already returns nil at once.
func (p *Process) Stop(grace time.Duration) error { return p.StopWith(syscall.SIGTERM, grace) }

// StopWith is Stop with sig in place of SIGTERM.
func (p *Process) StopWith(sig os.Signal, grace time.Duration) error {
	p.stopping.Store(true)
	_ = p.cmd.Process.Signal(sig)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.exited:
		return nil
	case <-timer.C:
	}
	if err := p.Kill(); err != nil {
		return err
	}
	name := sig.String()
	if sig == syscall.SIGTERM {
		name = "SIGTERM"
	}
	return fmt.Errorf("pid %d did not exit within %s of %s; killed", p.PID(), grace, name)
}

// Signal sends sig to the process alone, e.g. SIGSTOP and SIGCONT to
// freeze and thaw it; it does not wait.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal pid %d: %w", p.PID(), err)
	}
	return nil
}

// Kill sends SIGKILL and waits for the process to exit.
func (p *Process) Kill() error {
	p.stopping.Store(true)
	// Signalling a process that was reaped already says ErrProcessDone.
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill pid %d: %w", p.PID(), err)
	}
	<-p.exited
	return nil
}

// Tail is the last n lines of the log file at path, for an error message;
// the read error's text when it cannot be read.
func Tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
