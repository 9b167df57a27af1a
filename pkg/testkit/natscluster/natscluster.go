// Package natscluster runs a real NATS JetStream cluster for tests: n
// standalone nats-server processes (the released binary, not an embedded
// server), joined by routes, each with its own ports and store folder, so
// a test can SIGKILL a node, SIGTERM it, or restart it on the same ports
// and store and watch what clients and streams do.
//
// The binary is nats-server Version, found at $SURGE_NATS_SERVER or in
// <user cache>/surge-tools/nats-server-<Version>/nats-server, where .ci/run
// installs it (InstallCommand). A missing binary fails the test with that
// command: CI installs it, so a skip would only hide the tests.
package natscluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
)

// Version is the nats-server release the cluster runs.
const Version = "v2.15.3"

// EnvBinary names the variable that points at another nats-server binary.
const EnvBinary = "SURGE_NATS_SERVER"

// Bounds of the cluster's own waits.
const (
	// ReadyTimeout bounds the wait for a started node's /healthz (its
	// JetStream current with the meta leader and its streams).
	ReadyTimeout = 30 * time.Second
	// StopTimeout bounds the wait for a node to exit after SIGTERM; it is
	// SIGKILLed then.
	StopTimeout = 20 * time.Second
	// requestTimeout bounds one JetStream API request of StreamLeader.
	requestTimeout = 2 * time.Second
)

// InstallCommand installs the binary where Binary looks for it.
func InstallCommand() string {
	dir, err := cacheDir()
	if err != nil {
		dir = "<user cache>/surge-tools/nats-server-" + Version
	}
	return fmt.Sprintf("(cd /tmp && GOWORK=off GOBIN=%q go install github.com/nats-io/nats-server/v2@%s)", dir, Version)
}

func cacheDir() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("user cache dir: %w", err)
	}
	return filepath.Join(cache, "surge-tools", "nats-server-"+Version), nil
}

// Binary is the path of the nats-server binary, or an error naming the
// command that installs it.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		return p, nil
	}
	dir, err := cacheDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "nats-server")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("nats-server %s not found at %s (.ci/run installs it): install it with\n  %s\nor point %s at a nats-server binary", Version, p, InstallCommand(), EnvBinary)
	}
	return p, nil
}

// Cluster is n nats-server processes forming one JetStream cluster.
type Cluster struct {
	bin   string
	nodes []*node

	// conn is the cluster's own client connection, for StreamLeader; made
	// on first use.
	connMu sync.Mutex
	nc     *nats.Conn
	js     jetstream.JetStream
}

type node struct {
	name        string
	dir         string
	clientPort  int
	monitorPort int

	// mu serialises starts.
	mu sync.Mutex
	// proc is the node's process, nil while stopped.
	proc atomic.Pointer[proc.Process]
}

// Start runs n nodes on free loopback ports, each with its store under a
// temporary folder, and waits until every node is healthy (JetStream
// current with an elected meta leader). The nodes are stopped when the
// test ends. A missing binary fails the test with the install command.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("natscluster: need at least one node, got %d", n)
	}
	bin, err := Binary()
	if err != nil {
		t.Fatalf("natscluster: %v", err)
	}
	free, err := ports.Free(3 * n)
	if err != nil {
		t.Fatalf("natscluster: %v", err)
	}
	dir := t.TempDir()
	c := &Cluster{bin: bin}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", free[3*i+1]))
	}
	for i := range n {
		nd := &node{
			name:        fmt.Sprintf("n%d", i),
			dir:         filepath.Join(dir, fmt.Sprintf("n%d", i)),
			clientPort:  free[3*i],
			monitorPort: free[3*i+2],
		}
		if err := nd.writeConfig(free[3*i+1], routes); err != nil {
			t.Fatalf("natscluster: %v", err)
		}
		c.nodes = append(c.nodes, nd)
	}
	t.Cleanup(c.shutdown)
	for _, nd := range c.nodes {
		if err := nd.spawn(bin); err != nil {
			t.Fatalf("natscluster: %v", err)
		}
	}
	for i := range c.nodes {
		if err := c.waitHealthy(i, ReadyTimeout); err != nil {
			t.Fatalf("natscluster: %v", err)
		}
	}
	return c
}

// writeConfig writes the node's nats-server configuration.
func (nd *node) writeConfig(routePort int, routes []string) error {
	if err := os.MkdirAll(filepath.Join(nd.dir, "store"), 0o755); err != nil {
		return fmt.Errorf("store dir: %w", err)
	}
	quoted := make([]string, len(routes))
	for i, r := range routes {
		quoted[i] = strconv.Quote(r)
	}
	conf := fmt.Sprintf(`server_name: %s
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: 8MB
jetstream {
  store_dir: %q
  max_memory_store: 64MB
  max_file_store: 2GB
}
cluster {
  name: surge-test
  listen: "127.0.0.1:%d"
  routes: [%s]
}
`, nd.name, nd.clientPort, nd.monitorPort, filepath.Join(nd.dir, "store"), routePort, strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(nd.dir, "nats.conf"), []byte(conf), 0o644); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// spawn starts the node's process; its output goes to nats.log.
func (nd *node) spawn(bin string) error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if p := nd.proc.Load(); p != nil {
		return fmt.Errorf("node %s runs already (pid %d)", nd.name, p.PID())
	}
	cmd := exec.Command(bin, "-c", filepath.Join(nd.dir, "nats.conf"))
	cmd.Dir = nd.dir
	p, err := proc.Start(cmd, nd.logPath())
	if err != nil {
		return fmt.Errorf("start nats-server %s: %w", nd.name, err)
	}
	nd.proc.Store(p)
	return nil
}

func (nd *node) logPath() string { return filepath.Join(nd.dir, "nats.log") }

// end ends the node's process with how (Stop or Kill, which wait for the
// exit) and forgets it.
func (nd *node) end(how func(*proc.Process) error) error {
	p := nd.proc.Load()
	if p == nil {
		return fmt.Errorf("node %s is not running", nd.name)
	}
	err := how(p)
	nd.proc.CompareAndSwap(p, nil)
	if err != nil {
		return fmt.Errorf("node %s: %w", nd.name, err)
	}
	return nil
}

func (nd *node) stop() error {
	return nd.end(func(p *proc.Process) error { return p.Stop(StopTimeout) })
}

func (nd *node) kill() error { return nd.end((*proc.Process).Kill) }

// shutdown stops every running node, SIGTERM first, and closes the
// cluster's connection.
func (c *Cluster) shutdown() {
	c.connMu.Lock()
	if c.nc != nil {
		c.nc.Close()
	}
	c.connMu.Unlock()
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Go(func() {
			if nd.pid() != 0 {
				_ = nd.stop()
			}
		})
	}
	wg.Wait()
}

func (nd *node) pid() int { return nd.proc.Load().PID() }

// N is the number of nodes.
func (c *Cluster) N() int { return len(c.nodes) }

// URL is node i's client URL.
func (c *Cluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].clientPort)
}

// URLs is every node's client URL, comma separated, as services take it.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// Name is node i's server name, as stream and consumer info report their
// leader.
func (c *Cluster) Name(i int) string { return c.nodes[i].name }

// PID is node i's process id, 0 while it is stopped.
func (c *Cluster) PID(i int) int { return c.nodes[i].pid() }

// LogPath is node i's log file.
func (c *Cluster) LogPath(i int) string { return c.nodes[i].logPath() }

// Kill SIGKILLs node i and waits for the process to be gone: no leader
// hands over, raft elects a new one after its timeouts.
func (c *Cluster) Kill(i int) error { return c.nodes[i].kill() }

// Stop SIGTERMs node i and waits for it to exit: the node shuts down in
// order, its leaders step down first.
func (c *Cluster) Stop(i int) error { return c.nodes[i].stop() }

// Restart starts a stopped or killed node i again on the same ports and
// store, and waits until it is healthy (caught up with the cluster).
func (c *Cluster) Restart(i int) error {
	if err := c.nodes[i].spawn(c.bin); err != nil {
		return err
	}
	return c.waitHealthy(i, ReadyTimeout)
}

// waitHealthy polls node i's /healthz until it answers 200.
func (c *Cluster) waitHealthy(i int, timeout time.Duration) error {
	nd := c.nodes[i]
	client := &http.Client{Timeout: time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", nd.monitorPort)
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		p := nd.proc.Load()
		if p == nil {
			return fmt.Errorf("node %s is not running", nd.name)
		}
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not healthy after %s: %s; log %s", nd.name, timeout, last, nd.logPath())
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("node %s exited at start; log %s", nd.name, nd.logPath())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// JetStream is the cluster's own connection, made on first use and
// closed with the cluster; it reconnects to any live node. Tests may use
// it to inspect streams.
func (c *Cluster) JetStream() (jetstream.JetStream, error) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.js != nil {
		return c.js, nil
	}
	nc, err := nats.Connect(c.URLs(), nats.Name("natscluster"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.Timeout(time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to the cluster: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c.nc, c.js = nc, js
	return js, nil
}

// ErrNoLeader is returned by StreamLeader while the stream has no leader
// (an election runs, or too few nodes are up).
var ErrNoLeader = errors.New("no leader")

// StreamLeader is the index of the node leading stream, asked through the
// JetStream API (bounded by a request timeout). It returns ErrNoLeader
// while the stream has none.
func (c *Cluster) StreamLeader(stream string) (int, error) {
	js, err := c.JetStream()
	if err != nil {
		return -1, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, fmt.Errorf("stream %s: %w (%w)", stream, ErrNoLeader, err)
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("stream %s: %w", stream, ErrNoLeader)
	}
	return c.index(info.Cluster.Leader)
}

// ConsumerLeader is the index of the node leading a durable consumer.
func (c *Cluster) ConsumerLeader(stream, consumer string) (int, error) {
	js, err := c.JetStream()
	if err != nil {
		return -1, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	cons, err := js.Consumer(ctx, stream, consumer)
	if err != nil {
		return -1, fmt.Errorf("consumer %s/%s: %w (%w)", stream, consumer, ErrNoLeader, err)
	}
	info := cons.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("consumer %s/%s: %w", stream, consumer, ErrNoLeader)
	}
	return c.index(info.Cluster.Leader)
}

// WaitStreamLeader waits, at most timeout, until stream has a leader other
// than node not (-1: any), and returns it.
func (c *Cluster) WaitStreamLeader(stream string, not int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		i, err := c.StreamLeader(stream)
		if err == nil && i != not {
			return i, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("stream %s: still led by %s", stream, c.Name(i))
			}
			return -1, fmt.Errorf("no new leader after %s: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a remote state, not synchronising goroutines
	}
}

func (c *Cluster) index(name string) (int, error) {
	for i, nd := range c.nodes {
		if nd.name == name {
			return i, nil
		}
	}
	return -1, fmt.Errorf("leader %q is no node of the cluster", name)
}
