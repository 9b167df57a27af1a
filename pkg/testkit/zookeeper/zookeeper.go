// Package zookeeper runs a standalone ZooKeeper server from Debian's
// `zookeeper` package for replicated ClickHouse (ReplicatedMergeTree,
// `ON CLUSTER` DDL) in tests and the local stack: a free loopback port, its
// own data folder, ready when it serves requests (`ruok` answers `imok` a
// moment before: ClickHouse connecting then fails its handshake and, on
// 18.16, crashes in the next `ON CLUSTER` query), stopped by its process id.
package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
)

// Jar is where Debian installs ZooKeeper; its manifest names the rest of
// the class path.
const Jar = "/usr/share/java/zookeeper.jar"

// mainClass runs a standalone server when the configuration names no peers.
const mainClass = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

// Bounds of the server's own waits.
const (
	// ReadyTimeout bounds the wait for `imok` after start (~3 s here).
	ReadyTimeout = 60 * time.Second
	// StopTimeout bounds the wait for exit after SIGTERM; SIGKILL then.
	StopTimeout = 10 * time.Second
)

// ErrNotInstalled reports that ZooKeeper or java is missing and could not
// be installed.
var ErrNotInstalled = errors.New("zookeeper is not installed")

// EnsureInstalled installs Debian's zookeeper package (which brings java)
// with apt-get when it is missing and the process runs as root; otherwise
// it says what to do.
func EnsureInstalled(ctx context.Context, logf func(format string, args ...any)) error {
	if installed() {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: run `sudo apt-get install -y zookeeper` (Debian/Ubuntu) and try again", ErrNotInstalled)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("%w and apt-get is not available: install ZooKeeper so that %s exists, and java", ErrNotInstalled, Jar)
	}
	logf("installing zookeeper with apt-get (about 10 s)")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "zookeeper"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, lastLines(string(out), 10))
		}
	}
	if !installed() {
		return fmt.Errorf("%w after apt-get install", ErrNotInstalled)
	}
	return nil
}

func installed() bool {
	if _, err := os.Stat(Jar); err != nil {
		return false
	}
	_, err := exec.LookPath("java")
	return err == nil
}

// Server is one standalone ZooKeeper process.
type Server struct {
	Dir  string
	Port int

	// mu serialises starts; it is never held while waiting for the
	// process.
	mu sync.Mutex
	// proc is the current run of the server, nil when stopped.
	proc atomic.Pointer[proc.Process]
}

// Start writes zoo.cfg under dir for a free loopback port and starts the
// server; it returns once the server serves requests.
func Start(ctx context.Context, dir string) (*Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("zookeeper dir: %w", err)
	}
	free, err := ports.Free(1)
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Port: free[0]}
	if err := s.writeConfig(); err != nil {
		return nil, err
	}
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Addr is the client address, host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

func (s *Server) writeConfig() error {
	if err := os.MkdirAll(filepath.Join(s.Dir, "data"), 0o755); err != nil {
		return fmt.Errorf("zookeeper dir: %w", err)
	}
	cfg := strings.Join([]string{
		"tickTime=2000",
		"dataDir=" + filepath.Join(s.Dir, "data"),
		"clientPort=" + strconv.Itoa(s.Port),
		"clientPortAddress=127.0.0.1",
		// No admin web server (it would take port 8080) and only the
		// four-letter words the readiness check uses.
		"admin.enableServer=false",
		"4lw.commands.whitelist=ruok,stat",
		// Snapshots and logs of a test server need no purge policy, but
		// keep them from growing without end in a long local run.
		"autopurge.snapRetainCount=3",
		"autopurge.purgeInterval=1",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(s.Dir, "zoo.cfg"), []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write zoo.cfg: %w", err)
	}
	return nil
}

// Start runs the server on its configured port and data folder and waits
// until it serves requests; it returns at once when the server runs already.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	if p := s.proc.Load(); p != nil && p.Running() {
		s.mu.Unlock()
		return nil
	}
	p, err := s.spawn()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(ReadyTimeout)
	for {
		if Serving(s.Addr()) == nil {
			return nil
		}
		select {
		case <-p.Exited():
			s.proc.CompareAndSwap(p, nil)
			return fmt.Errorf("zookeeper on %s exited at start; see %s", s.Addr(), s.logPath())
		case <-ctx.Done():
			s.stop(p)
			return fmt.Errorf("wait for zookeeper: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop(p)
			return fmt.Errorf("zookeeper on %s not ready after %s; see %s", s.Addr(), ReadyTimeout, s.logPath())
		}
	}
}

func (s *Server) logPath() string { return filepath.Join(s.Dir, "zookeeper.log") }

// spawn starts the JVM, its output in the log, and makes it the server's
// process; s.mu is held.
func (s *Server) spawn() (*proc.Process, error) {
	cmd := exec.Command("java",
		// A small heap and the serial collector: a test server holds a few
		// thousand nodes and must not take a core from the rest.
		"-Xms32m", "-Xmx256m", "-XX:+UseSerialGC",
		"-Dzookeeper.log.dir="+s.Dir,
		"-cp", Jar, mainClass, filepath.Join(s.Dir, "zoo.cfg"))
	cmd.Dir = s.Dir
	p, err := proc.Start(cmd, s.logPath())
	if err != nil {
		return nil, fmt.Errorf("start zookeeper: %w", err)
	}
	s.proc.Store(p)
	return p, nil
}

// Stop sends SIGTERM and waits for exit (SIGKILL after StopTimeout), so
// the port and data folder can be reused at once.
func (s *Server) Stop() error {
	if p := s.proc.Load(); p != nil {
		s.stop(p)
	}
	return nil
}

// stop ends p and waits for it, holding no lock.
func (s *Server) stop(p *proc.Process) {
	_ = p.Stop(StopTimeout)
	s.proc.CompareAndSwap(p, nil) // unless another run took its place
}

// PID is the process id, 0 when stopped.
func (s *Server) PID() int { return s.proc.Load().PID() }

// Ruok asks the server at addr whether it runs without error: nil when it
// answers `imok`. A server answers so shortly before it serves requests;
// Serving tells that.
func Ruok(addr string) error {
	answer, err := fourLetters(addr, "ruok")
	if err != nil {
		return err
	}
	if answer != "imok" {
		return fmt.Errorf("ruok %s: answered %q", addr, answer)
	}
	return nil
}

// Serving tells whether the server at addr serves client requests: nil
// when `stat` answers with its version and statistics.
func Serving(addr string) error {
	answer, err := fourLetters(addr, "stat")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(answer, "Zookeeper version:") {
		return fmt.Errorf("stat %s: %s", addr, strings.TrimSpace(answer))
	}
	return nil
}

// fourLetters sends a four-letter command and reads the answer to EOF.
func fourLetters(addr, cmd string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", cmd, addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte(cmd)); err != nil {
		return "", fmt.Errorf("%s %s: %w", cmd, addr, err)
	}
	answer, err := io.ReadAll(conn)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", cmd, addr, err)
	}
	return string(answer), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
