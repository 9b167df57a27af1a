// Package natscluster runs a real NATS JetStream cluster: n standalone
// nats-server processes (the released binary, not an embedded server),
// joined by routes, each with its own ports and store folder, so a test
// can SIGKILL a node, SIGTERM it, or restart it on the same ports and
// store and watch what clients and streams do. Start runs one for a test;
// Launch runs one shaped by Options (limits, logins, the command), which
// `surge up --cluster` uses for its NATS nodes.
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
	"slices"
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

// Options shape a cluster for Launch. The zero value of each field is the
// test cluster's setting.
type Options struct {
	// Nodes is the number of nodes; 3 when 0.
	Nodes int
	// Dir holds each node's folder, <Dir>/<node name>: nats.conf, store/
	// and nats.log. Required.
	Dir string
	// Name is the cluster's name; "surge-test" when empty.
	Name string
	// NodePrefix names node i <NodePrefix><i>; "n" when empty.
	NodePrefix string
	// Command runs one node, `-c <config>` appended; when empty, the
	// released nats-server that Binary finds.
	Command []string
	// MaxPayload, MaxPending, MaxMemoryStore and MaxFileStore are the
	// nodes' limits in nats-server's units ("16MB"); 8MB, the server's
	// default, 64MB and 2GB when empty.
	MaxPayload, MaxPending, MaxMemoryStore, MaxFileStore string
	// Users are the logins the nodes accept; anyone may connect when
	// there are none. The cluster's own connection logs in as the first.
	Users []User
	// StopTimeout bounds the wait for a node to exit after SIGTERM before
	// it is SIGKILLed; StopTimeout when zero.
	StopTimeout time.Duration
}

// User is a login the nodes accept. Publish and Subscribe, when set, are
// the subjects it may publish to and subscribe to, and nothing else.
type User struct {
	Name, Password     string
	Publish, Subscribe []string
}

func (o *Options) defaults() {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Name == "" {
		o.Name = "surge-test"
	}
	if o.NodePrefix == "" {
		o.NodePrefix = "n"
	}
	if o.MaxPayload == "" {
		o.MaxPayload = "8MB"
	}
	if o.MaxMemoryStore == "" {
		o.MaxMemoryStore = "64MB"
	}
	if o.MaxFileStore == "" {
		o.MaxFileStore = "2GB"
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = StopTimeout
	}
}

// Cluster is n nats-server processes forming one JetStream cluster.
type Cluster struct {
	opts  Options
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
	c, err := Launch(context.Background(), Options{Nodes: n, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("natscluster: %v", err)
	}
	t.Cleanup(c.Shutdown)
	return c
}

// Launch runs the nodes o describes on free loopback ports and waits
// until every node is healthy (JetStream current with an elected meta
// leader), each for at most ReadyTimeout. Shutdown stops them; a failed
// launch stops what it started.
func Launch(ctx context.Context, o Options) (*Cluster, error) {
	o.defaults()
	if o.Dir == "" {
		return nil, errors.New("a folder (Options.Dir) is required")
	}
	if len(o.Command) == 0 {
		bin, err := Binary()
		if err != nil {
			return nil, err
		}
		o.Command = []string{bin}
	}
	free, err := ports.Free(3 * o.Nodes)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: o}
	var routes []string
	for i := range o.Nodes {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", free[3*i+1]))
	}
	for i := range o.Nodes {
		name := o.NodePrefix + strconv.Itoa(i)
		nd := &node{
			name:        name,
			dir:         filepath.Join(o.Dir, name),
			clientPort:  free[3*i],
			monitorPort: free[3*i+2],
		}
		if err := nd.writeConfig(&o, free[3*i+1], routes); err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		if err := nd.spawn(o.Command); err != nil {
			c.Shutdown()
			return nil, err
		}
	}
	for i := range c.nodes {
		if err := c.waitHealthy(ctx, i, ReadyTimeout); err != nil {
			c.Shutdown()
			return nil, err
		}
	}
	return c, nil
}

// writeConfig writes the node's nats-server configuration.
func (nd *node) writeConfig(o *Options, routePort int, routes []string) error {
	if err := os.MkdirAll(filepath.Join(nd.dir, "store"), 0o755); err != nil {
		return fmt.Errorf("store dir: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `server_name: %s
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: %s
`, nd.name, nd.clientPort, nd.monitorPort, o.MaxPayload)
	if o.MaxPending != "" {
		fmt.Fprintf(&b, "max_pending: %s\n", o.MaxPending)
	}
	fmt.Fprintf(&b, `jetstream {
  store_dir: %q
  max_memory_store: %s
  max_file_store: %s
}
cluster {
  name: %s
  listen: "127.0.0.1:%d"
  routes: [%s]
}
`, filepath.Join(nd.dir, "store"), o.MaxMemoryStore, o.MaxFileStore, o.Name, routePort, quoteAll(routes))
	if len(o.Users) > 0 {
		b.WriteString("authorization {\n  users = [\n")
		for _, u := range o.Users {
			if len(u.Publish) == 0 && len(u.Subscribe) == 0 {
				fmt.Fprintf(&b, "    { user: %q, password: %q }\n", u.Name, u.Password)
				continue
			}
			fmt.Fprintf(&b, "    {\n      user: %q, password: %q\n      permissions: {\n", u.Name, u.Password)
			if len(u.Publish) > 0 {
				fmt.Fprintf(&b, "        publish: { allow: [%s] }\n", quoteAll(u.Publish))
			}
			if len(u.Subscribe) > 0 {
				fmt.Fprintf(&b, "        subscribe: { allow: [%s] }\n", quoteAll(u.Subscribe))
			}
			b.WriteString("      }\n    }\n")
		}
		b.WriteString("  ]\n}\n")
	}
	if err := os.WriteFile(filepath.Join(nd.dir, "nats.conf"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// quoteAll quotes each string and joins them with ", ".
func quoteAll(ss []string) string {
	quoted := make([]string, len(ss))
	for i, s := range ss {
		quoted[i] = strconv.Quote(s)
	}
	return strings.Join(quoted, ", ")
}

// spawn starts the node's process; its output goes to nats.log.
func (nd *node) spawn(command []string) error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if p := nd.proc.Load(); p != nil {
		return fmt.Errorf("node %s runs already (pid %d)", nd.name, p.PID())
	}
	args := append(slices.Clone(command[1:]), "-c", filepath.Join(nd.dir, "nats.conf"))
	cmd := exec.Command(command[0], args...)
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

func (nd *node) stop(grace time.Duration) error {
	return nd.end(func(p *proc.Process) error { return p.Stop(grace) })
}

func (nd *node) kill() error { return nd.end((*proc.Process).Kill) }

// Shutdown stops every running node, SIGTERM first (SIGKILL after
// Options.StopTimeout), and closes the cluster's connection.
func (c *Cluster) Shutdown() {
	c.connMu.Lock()
	if c.nc != nil {
		c.nc.Close()
	}
	c.connMu.Unlock()
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Go(func() {
			if nd.pid() != 0 {
				_ = nd.stop(c.opts.StopTimeout)
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
func (c *Cluster) Stop(i int) error { return c.nodes[i].stop(c.opts.StopTimeout) }

// Restart starts a stopped or killed node i again on the same ports and
// store, and waits until it is healthy (caught up with the cluster).
func (c *Cluster) Restart(i int) error { return c.RestartContext(context.Background(), i) }

// RestartContext is Restart whose wait also ends with ctx.
func (c *Cluster) RestartContext(ctx context.Context, i int) error {
	if err := c.nodes[i].spawn(c.opts.Command); err != nil {
		return err
	}
	return c.waitHealthy(ctx, i, ReadyTimeout)
}

// waitHealthy polls node i's /healthz until it answers 200.
func (c *Cluster) waitHealthy(ctx context.Context, i int, timeout time.Duration) error {
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
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
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
			return fmt.Errorf("node %s not healthy after %s: %s; log %s:\n%s", nd.name, timeout, last, nd.logPath(), proc.Tail(nd.logPath(), 10))
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("node %s exited at start; log %s:\n%s", nd.name, nd.logPath(), proc.Tail(nd.logPath(), 10))
		case <-ctx.Done():
			return fmt.Errorf("node %s: %w", nd.name, ctx.Err())
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
	opts := []nats.Option{nats.Name("natscluster"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100 * time.Millisecond), nats.Timeout(time.Second)}
	if len(c.opts.Users) > 0 {
		opts = append(opts, nats.UserInfo(c.opts.Users[0].Name, c.opts.Users[0].Password))
	}
	nc, err := nats.Connect(c.URLs(), opts...)
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
	return c.StreamLeaderVia(ctx, js, stream)
}

// StreamLeaderVia is StreamLeader asked through js, bounded by ctx.
func (c *Cluster) StreamLeaderVia(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
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
