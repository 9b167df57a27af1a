// Package chserver runs real clickhouse-server processes, one per shard
// server, each with its own ports and data folder, for the local stack and
// for tests. The servers share a cluster definition so a Distributed table
// over them answers queries across shards. A replicated cluster (Options:
// replicas per shard and a ZooKeeper) gives each shard several servers that
// hold ReplicatedMergeTree tables and run `ON CLUSTER` DDL.
package chserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
)

// Binary is where Debian installs the server.
const Binary = "/usr/sbin/clickhouse-server"

// StopTimeout bounds the wait for a server to exit after SIGTERM; it is
// SIGKILLed then.
const StopTimeout = 30 * time.Second

// DefaultCluster is the cluster name the Distributed table uses.
const DefaultCluster = "events_cluster"

// ErrNotInstalled reports that clickhouse-server is missing and could not be installed.
var ErrNotInstalled = errors.New("clickhouse-server is not installed")

// EnsureInstalled installs clickhouse-server with apt-get when it is
// missing and the process runs as root; otherwise it says what to do.
func EnsureInstalled(ctx context.Context, logf func(format string, args ...any)) error {
	if _, err := os.Stat(Binary); err == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: run `sudo apt-get install -y clickhouse-server` (Debian/Ubuntu) and try again", ErrNotInstalled)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("%w and apt-get is not available: install ClickHouse so that %s exists", ErrNotInstalled, Binary)
	}
	logf("installing clickhouse-server with apt-get (about 15 s)")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "clickhouse-server", "clickhouse-client"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, lastLines(string(out), 10))
		}
	}
	if _, err := os.Stat(Binary); err != nil {
		return fmt.Errorf("%w after apt-get install", ErrNotInstalled)
	}
	return nil
}

// Server is one clickhouse-server process.
type Server struct {
	Dir      string
	TCPPort  int
	HTTPPort int
	// Shard and Replica place the server in its cluster; Replica is 0 in a
	// cluster without replicas.
	Shard, Replica int

	// mu serialises starts; it is never held while waiting for the
	// process.
	mu sync.Mutex
	// proc is the current run of clickhouse-server, nil when stopped.
	proc atomic.Pointer[proc.Process]
}

// Addr is the native protocol address.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.TCPPort)) }

// HTTPAddr is the HTTP interface address.
func (s *Server) HTTPAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.HTTPPort)) }

// Cluster is a set of servers that know each other as one cluster.
type Cluster struct {
	Name string
	// Servers lists every server, shard by shard (Shards flattened).
	Servers []*Server
	// Shards lists each shard's servers: its replicas.
	Shards [][]*Server
	// ZooKeeper is the address the servers coordinate through, empty
	// without replication.
	ZooKeeper string
}

// Addrs lists the native addresses in shard-server order: every server,
// shard by shard.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		out[i] = s.Addr()
	}
	return out
}

// ReplicaAddrs lists the native addresses of each shard's replicas.
func (c *Cluster) ReplicaAddrs() [][]string {
	out := make([][]string, len(c.Shards))
	for i, shard := range c.Shards {
		for _, s := range shard {
			out[i] = append(out[i], s.Addr())
		}
	}
	return out
}

// Replicated tells whether the servers coordinate through ZooKeeper, so
// ReplicatedMergeTree and `ON CLUSTER` work.
func (c *Cluster) Replicated() bool { return c.ZooKeeper != "" }

// Options shape a cluster.
type Options struct {
	// Shards is the number of shards, at least 1.
	Shards int
	// Replicas is the number of servers per shard; 0 means 1.
	Replicas int
	// ZooKeeper is the host:port of a ZooKeeper server (see
	// pkg/testkit/zookeeper). It is required with more than one replica
	// and turns on replication: each server gets the ZooKeeper, the
	// macros {shard} (the shard index) and {replica} (a name unique in
	// the shard), interserver_http_host 127.0.0.1 and its own interserver
	// port, and the cluster's shards use internal_replication.
	ZooKeeper string
}

// StartCluster writes the configuration of n servers under dir, on free
// loopback ports, and starts them all: n shards of one server each.
func StartCluster(ctx context.Context, dir string, n int) (*Cluster, error) {
	return Start(ctx, dir, Options{Shards: n})
}

// Start writes the configuration of the servers o asks for under dir, on
// free loopback ports, and starts them all.
func Start(ctx context.Context, dir string, o Options) (*Cluster, error) {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Shards < 1 || o.Replicas < 1 {
		return nil, fmt.Errorf("clickhouse cluster: want at least one shard and replica, got %d x %d", o.Shards, o.Replicas)
	}
	if o.Replicas > 1 && o.ZooKeeper == "" {
		return nil, errors.New("clickhouse cluster: replicas need a ZooKeeper")
	}
	// The servers run in their own folders, so a relative dir would point
	// elsewhere from there.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("clickhouse dir: %w", err)
	}
	c := &Cluster{Name: DefaultCluster, ZooKeeper: o.ZooKeeper}
	n := o.Shards * o.Replicas
	free, err := ports.Free(3 * n)
	if err != nil {
		return nil, err
	}
	for shard := range o.Shards {
		var replicas []*Server
		for replica := range o.Replicas {
			i := len(c.Servers)
			name := fmt.Sprintf("clickhouse-%d", shard)
			if c.Replicated() {
				name = fmt.Sprintf("clickhouse-%d-%d", shard, replica)
			}
			s := &Server{
				Dir:      filepath.Join(dir, name),
				TCPPort:  free[3*i],
				HTTPPort: free[3*i+1],
				Shard:    shard,
				Replica:  replica,
			}
			c.Servers = append(c.Servers, s)
			replicas = append(replicas, s)
		}
		c.Shards = append(c.Shards, replicas)
	}
	for i, s := range c.Servers {
		if err := s.writeConfig(c, free[3*i+2]); err != nil {
			return nil, err
		}
	}
	for _, s := range c.Servers {
		if err := s.Start(ctx); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

// Stop stops every server and waits for them to exit.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, s := range c.Servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Stop()
		}()
	}
	wg.Wait()
}

var (
	reRemote = regexp.MustCompile(`(?s)<remote_servers[^>]*>.*?</remote_servers>`)
	reListen = regexp.MustCompile(`(?m)^\s*<listen_host>[^<]*</listen_host>\s*$`)
	// reIncludeFrom is the Debian file's (commented) include_from.
	reIncludeFrom = regexp.MustCompile(`(?m)^\s*<include_from>[^<]*</include_from>\s*$`)
)

func (s *Server) writeConfig(c *Cluster, interserverPort int) error {
	for _, sub := range []string{"data", "log", "tmp", "user_files", "format_schemas"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, sub), 0o755); err != nil {
			return fmt.Errorf("clickhouse dir: %w", err)
		}
	}
	base, err := os.ReadFile("/etc/clickhouse-server/config.xml")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotInstalled, err)
	}
	users, err := os.ReadFile("/etc/clickhouse-server/users.xml")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotInstalled, err)
	}
	cfg := string(base)
	cfg = strings.NewReplacer(
		"<tcp_port>9000</tcp_port>", "<tcp_port>"+strconv.Itoa(s.TCPPort)+"</tcp_port>",
		"<http_port>8123</http_port>", "<http_port>"+strconv.Itoa(s.HTTPPort)+"</http_port>",
		"<interserver_http_port>9009</interserver_http_port>", "<interserver_http_port>"+strconv.Itoa(interserverPort)+"</interserver_http_port>",
		"/var/lib/clickhouse/tmp/", filepath.Join(s.Dir, "tmp")+"/",
		"/var/lib/clickhouse/user_files/", filepath.Join(s.Dir, "user_files")+"/",
		"/var/lib/clickhouse/format_schemas/", filepath.Join(s.Dir, "format_schemas")+"/",
		"/var/lib/clickhouse/", filepath.Join(s.Dir, "data")+"/",
		"/var/log/clickhouse-server/", filepath.Join(s.Dir, "log")+"/",
	).Replace(cfg)
	cfg = reListen.ReplaceAllString(cfg, "")
	cfg = strings.Replace(cfg, "</yandex>", "    <listen_host>127.0.0.1</listen_host>\n</yandex>", 1)
	var remote strings.Builder
	remote.WriteString("<remote_servers>\n        <" + c.Name + ">\n")
	for _, shard := range c.Shards {
		remote.WriteString("            <shard>\n")
		if c.Replicated() {
			// The Distributed table writes to one replica and lets
			// replication copy it, and reads from any.
			remote.WriteString("                <internal_replication>true</internal_replication>\n")
		}
		for _, o := range shard {
			fmt.Fprintf(&remote, "                <replica><host>127.0.0.1</host><port>%d</port></replica>\n", o.TCPPort)
		}
		remote.WriteString("            </shard>\n")
	}
	remote.WriteString("        </" + c.Name + ">\n    </remote_servers>")
	cfg = reRemote.ReplaceAllLiteralString(cfg, remote.String())
	if c.Replicated() {
		// The Debian file takes zookeeper-servers and macros from the
		// include file; replicas fetch parts from the interserver host
		// each advertises, which is otherwise the machine's hostname.
		include := filepath.Join(s.Dir, "include.xml")
		if err := os.WriteFile(include, []byte(s.includeFile(c)), 0o644); err != nil {
			return fmt.Errorf("write clickhouse include file: %w", err)
		}
		cfg = reIncludeFrom.ReplaceAllString(cfg, "")
		cfg = strings.Replace(cfg, "</yandex>", "    <include_from>"+include+"</include_from>\n"+
			"    <interserver_http_host>127.0.0.1</interserver_http_host>\n</yandex>", 1)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "config.xml"), []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write clickhouse config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "users.xml"), users, 0o644); err != nil {
		return fmt.Errorf("write clickhouse users: %w", err)
	}
	return nil
}

// includeFile is the server's substitutions: ZooKeeper and its macros.
//
// The ZooKeeper session lasts 10 s, not ClickHouse's 30 s: a SIGKILLed
// replica counts as active until its session expires, and on 18.16 an
// ALTER waits for every active replica to apply it, holding up the
// inserts on the others behind it; new typed columns bring ALTERs at any
// time (see docs/scaling.md).
func (s *Server) includeFile(c *Cluster) string {
	host, port, _ := net.SplitHostPort(c.ZooKeeper)
	return fmt.Sprintf(`<yandex>
    <zookeeper-servers>
        <node><host>%s</host><port>%s</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper-servers>
    <macros>
        <shard>%d</shard>
        <replica>%s</replica>
    </macros>
</yandex>
`, host, port, s.Shard, filepath.Base(s.Dir))
}

// StructureTooDifferent reports whether the server's last start failed
// because a Replicated table's columns in ZooKeeper differ from its own by
// more than 2 (ClickHouse 18.16 refuses to start then: a replica that was
// down while more than two columns were added, or killed in the middle of
// such an ALTER).
func (s *Server) StructureTooDifferent() bool {
	data, err := os.ReadFile(filepath.Join(s.Dir, "log", "clickhouse-server.err.log"))
	return err == nil && bytes.Contains(data, []byte("Table structure in ZooKeeper is too different from local table structure"))
}

// Unattached lists the tables of database db whose metadata the server
// holds on disk but that it did not attach at its last start. ClickHouse
// 18.16 was seen, once, to start after a SIGKILL in the middle of column
// ALTERs without its Replicated table and without a word in its log; a
// start with force_restore_data attached it.
func (s *Server) Unattached(db string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(s.Dir, "data", "metadata", db, "*.sql"))
	if err != nil || len(files) == 0 {
		return nil, err
	}
	out, err := Query(s.HTTPAddr(), fmt.Sprintf("SELECT name FROM system.tables WHERE database = '%s'", db))
	if err != nil {
		return nil, fmt.Errorf("list tables of %s: %w", s.Addr(), err)
	}
	attached := map[string]bool{}
	for _, name := range strings.Fields(out) {
		attached[name] = true
	}
	var missing []string
	for _, f := range files {
		if name := strings.TrimSuffix(filepath.Base(f), ".sql"); !attached[name] {
			missing = append(missing, name)
		}
	}
	return missing, nil
}

// ForceRestore creates the force_restore_data flag: at its next start the
// server skips its sanity checks once, takes a Replicated table's columns
// from ZooKeeper and fetches what it lacks from the other replicas. It is
// ClickHouse's documented recovery, and what an operator does for a
// replica that refuses to start with StructureTooDifferent.
func (s *Server) ForceRestore() error {
	flags := filepath.Join(s.Dir, "data", "flags")
	if err := os.MkdirAll(flags, 0o755); err != nil {
		return fmt.Errorf("force restore: %w", err)
	}
	if err := os.WriteFile(filepath.Join(flags, "force_restore_data"), nil, 0o644); err != nil {
		return fmt.Errorf("force restore: %w", err)
	}
	return nil
}

// Start runs the server and waits until its native port accepts. It
// returns at once when the server runs already; a server being stopped is
// waited for, then started anew.
func (s *Server) Start(ctx context.Context) error {
	p, err := s.launch(ctx)
	if err != nil || p == nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-p.Exited():
			s.proc.CompareAndSwap(p, nil)
			return fmt.Errorf("clickhouse-server on %s exited at start; see %s", s.Addr(), filepath.Join(s.Dir, "log"))
		case <-ctx.Done():
			s.stop(p)
			return fmt.Errorf("wait for clickhouse-server: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop(p)
			return fmt.Errorf("clickhouse-server on %s not ready after 30s", s.Addr())
		}
	}
}

// launch starts the process and records it; nil when one runs already.
// A process being stopped is waited for first, without holding mu.
func (s *Server) launch(ctx context.Context) (*proc.Process, error) {
	for {
		s.mu.Lock()
		p := s.proc.Load()
		if p == nil || !p.Running() { // stopped or died: start anew
			p, err := s.spawn()
			s.mu.Unlock()
			return p, err
		}
		s.mu.Unlock()
		if !p.Stopping() {
			return nil, nil
		}
		select {
		case <-p.Exited():
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for clickhouse-server to stop: %w", ctx.Err())
		}
	}
}

// spawn starts clickhouse-server, its output in log/stdout.log, and makes
// it the server's process; s.mu is held.
func (s *Server) spawn() (*proc.Process, error) {
	cmd := exec.Command(Binary, "--config-file="+filepath.Join(s.Dir, "config.xml"))
	cmd.Dir = s.Dir
	p, err := proc.Start(cmd, filepath.Join(s.Dir, "log", "stdout.log"))
	if err != nil {
		return nil, fmt.Errorf("start clickhouse-server: %w", err)
	}
	s.proc.Store(p)
	return p, nil
}

// Stop sends SIGTERM and waits for exit (SIGKILL after StopTimeout), so
// the data folder can be reused at once.
func (s *Server) Stop() error {
	if p := s.proc.Load(); p != nil {
		s.stop(p)
	}
	return nil
}

// stop ends p and waits for it, holding no lock, so PID and a concurrent
// Stop or Start do not wait behind the grace period (a Start waits for
// the exit, then starts anew).
func (s *Server) stop(p *proc.Process) {
	_ = p.Stop(StopTimeout)
	s.proc.CompareAndSwap(p, nil) // unless another run took its place
}

// Kill SIGKILLs the server and waits for it to exit; Start starts it
// again. A stopped server is an error.
func (s *Server) Kill() error {
	p := s.proc.Load()
	if p == nil {
		return fmt.Errorf("clickhouse-server on %s is not running", s.Addr())
	}
	err := p.Kill()
	s.proc.CompareAndSwap(p, nil)
	return err
}

// PID is the process id, 0 when stopped.
func (s *Server) PID() int { return s.proc.Load().PID() }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// queryClient bounds the harness's own queries; it keeps no idle
// connections, so no goroutine of it outlives a test (goleak).
var queryClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Query runs one SQL statement on the ClickHouse server whose HTTP
// interface is at addr and returns its answer, white space around it
// trimmed (a TSV answer's last newline). An answer other than 200 is an
// error with the server's message. It fails no test, so it may run off
// the test goroutine.
func Query(addr, sql string) (string, error) {
	resp, err := queryClient.Post("http://"+addr+"/", "text/plain", strings.NewReader(sql))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("clickhouse %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return strings.TrimSpace(string(body)), nil
}
