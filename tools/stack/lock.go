package stack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFile, in a data folder, is locked (flock) by the process whose stack
// runs there and holds that process's id. The kernel releases the lock when
// the process ends, however it ends, so a pid left in the file by a killed
// stack never blocks the next one. The file itself stays: removing a lock
// file while another process may have it open would let two processes hold
// "the" lock.
const LockFile = "surge.lock"

// ErrInUse is what Lock's error matches (errors.Is) when another process
// holds the folder.
var ErrInUse = errors.New("data folder in use")

// InUseError says which process holds a data folder.
type InUseError struct {
	Dir string
	// PID is the holder's process id; 0 when it has not written it yet.
	PID int
}

func (e *InUseError) Error() string {
	holder := "another process"
	if e.PID > 0 {
		holder = "process " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("data folder %s is in use by %s (lock %s): stop that stack or choose another folder",
		e.Dir, holder, filepath.Join(e.Dir, LockFile))
}

// Is makes errors.Is(err, ErrInUse) hold.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

// DirLock is the lock of one data folder.
type DirLock struct {
	dir string
	f   *os.File
}

// Lock takes dir (created if missing) for this process, or fails at once
// with an *InUseError when another process, or another stack of this
// process, holds it.
func Lock(dir string) (*DirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("data folder: %w", err)
	}
	path := filepath.Join(dir, LockFile)
	// os.OpenFile sets O_CLOEXEC: the clickhouse-server children do not
	// inherit the lock, so it ends with this process.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// A flock belongs to this open file: a second Lock in the same process
	// opens the file again and is refused like another process.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &InUseError{Dir: dir, PID: readPID(f)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := writePID(f, os.Getpid()); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &DirLock{dir: dir, f: f}, nil
}

// Dir is the locked folder.
func (l *DirLock) Dir() string { return l.dir }

// Unlock clears the pid and releases the folder.
func (l *DirLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	terr := l.f.Truncate(0)
	cerr := l.f.Close() // closing the only descriptor releases the flock
	l.f = nil
	return errors.Join(terr, cerr)
}

// writePID puts pid at the start of f and cuts what a previous holder left
// after it: one write, so a reader sees the old pid or the new one.
func writePID(f *os.File, pid int) error {
	s := strconv.Itoa(pid) + "\n"
	if _, err := f.WriteAt([]byte(s), 0); err != nil {
		return err
	}
	return f.Truncate(int64(len(s)))
}

// readPID is the holder's pid as written in f, 0 when unreadable.
func readPID(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		return 0
	}
	return pid
}
