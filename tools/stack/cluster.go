package stack

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natscluster"
	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
)

// Bounds of the local cluster's waits.
const (
	// ClusterReadyTimeout bounds the wait for every service instance's /readyz.
	ClusterReadyTimeout = 90 * time.Second
	// ClusterStopTimeout bounds the wait for one process to exit after
	// SIGTERM; it is SIGKILLed then.
	ClusterStopTimeout = 30 * time.Second
)

// ClusterStreamMaxBytes is each stream's size limit in a local cluster.
const ClusterStreamMaxBytes = 1 << 30

// ClusterServices are the four services, in pipeline order.
var ClusterServices = []string{"ingest", "partitioner", "batcher", "sink"}

// ClusterOptions shape a local cluster: 3 NATS nodes, ZooKeeper, 2
// ClickHouse shards of 2 replicas and two processes of every service.
type ClusterOptions struct {
	// Dir holds every server's data, the service binaries (bin/) and the
	// logs (logs/); it is locked like a local stack's.
	Dir string
	// Fresh deletes the folder's data, once its lock is taken.
	Fresh bool
	// Shards is the number of logical shards; 8 when 0.
	Shards int
	// IngestAddrs are the HTTP listen addresses of the two ingest
	// instances.
	IngestAddrs [2]string
	// SourceDir is a folder inside the Surge source tree (its go.work),
	// where the service binaries are built from; the working directory
	// when empty.
	SourceDir string
	// LogLevel is the services' log level; "warn" when empty.
	LogLevel string
	// Logf reports progress; silent when nil.
	Logf func(format string, args ...any)
	// ServiceEnv adds or overrides variables of one service's processes,
	// by service name (e.g. a log level for the batchers only).
	ServiceEnv map[string]map[string]string
	// NATSServer is the command that runs one NATS node, to which
	// `-c <config>` is appended: `surge up --cluster` passes its own
	// binary and `nats-server`, since surge embeds nats-server. When
	// empty, the released nats-server natscluster.Binary finds.
	NATSServer []string
}

// Instance is one service process.
type Instance struct {
	// Name is "<service>-<index>", e.g. "sink-1".
	Name      string
	Service   string
	AdminAddr string
	// IngestURL is the base URL of an ingest instance's HTTP API.
	IngestURL string
	LogPath   string
	proc      *proc.Process
	env       map[string]string
}

// natsNode is one nats-server process of the cluster.
type natsNode struct {
	name, dir               string
	clientPort, monitorPort int
	proc                    *proc.Process
}

// Cluster is a running local cluster.
type Cluster struct {
	ZooKeeper  *zookeeper.Server
	ClickHouse *chserver.Cluster
	// Instances in pipeline order, two per service.
	Instances []*Instance
	Database  string

	nats []*natsNode
	// natsServer is ClusterOptions.NATSServer, or the released binary.
	natsServer []string
	opts       ClusterOptions
	// common and perService are the services' environment, kept for
	// instances added later.
	common     map[string]string
	perService map[string]map[string]string
	lock       *DirLock
	// mu guards Instances and each instance's and node's proc once the
	// cluster runs: the fault methods (KillInstance, RestartNATS, ...)
	// may be called from any goroutine.
	mu sync.Mutex
}

// StartCluster brings up the servers, builds and starts the service
// processes, and waits until every instance is ready.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if o.Dir == "" {
		return nil, errors.New("cluster: a data folder (ClusterOptions.Dir) is required")
	}
	if o.Shards == 0 {
		o.Shards = 8
	}
	if o.LogLevel == "" {
		o.LogLevel = "warn"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("data folder: %w", err)
	}
	o.Dir = dir
	natsServer := o.NATSServer
	if len(natsServer) == 0 {
		bin, err := natscluster.Binary()
		if err != nil {
			return nil, err
		}
		natsServer = []string{bin}
	}
	lock, err := Lock(o.Dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{opts: o, lock: lock, Database: "surge", natsServer: natsServer}
	fail := func(err error) (*Cluster, error) {
		_ = c.Stop()
		return nil, err
	}
	if o.Fresh {
		if err := clearData(o.Dir); err != nil {
			return fail(err)
		}
	}

	// The binaries build while the servers start.
	built := make(chan error, 1)
	go func() { built <- buildServices(ctx, o.SourceDir, filepath.Join(o.Dir, "bin")) }()
	waitBuilt := func() error {
		select {
		case err := <-built:
			return err
		case <-ctx.Done():
			<-built
			return ctx.Err()
		}
	}

	o.Logf("starting 3 NATS nodes")
	if err := c.startNATS(ctx); err != nil {
		_ = waitBuilt()
		return fail(err)
	}
	o.Logf("starting ZooKeeper")
	zk, err := zookeeper.Start(ctx, filepath.Join(o.Dir, "zookeeper"))
	if err != nil {
		_ = waitBuilt()
		return fail(err)
	}
	c.ZooKeeper = zk
	o.Logf("starting ClickHouse: 2 shards x 2 replicas")
	ch, err := chserver.Start(ctx, filepath.Join(o.Dir, "clickhouse"), chserver.Options{Shards: 2, Replicas: 2, ZooKeeper: zk.Addr()})
	if err != nil {
		_ = waitBuilt()
		return fail(err)
	}
	c.ClickHouse = ch
	if err := waitBuilt(); err != nil {
		return fail(err)
	}
	o.Logf("starting two processes of each service")
	if err := c.startServices(); err != nil {
		return fail(err)
	}
	if err := c.waitReady(ctx); err != nil {
		return fail(err)
	}
	return c, nil
}

// buildServices builds the four service binaries into bin with one `go
// build`, run in src (inside the source tree, so go.work applies).
func buildServices(ctx context.Context, src, bin string) error {
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return fmt.Errorf("bin folder: %w", err)
	}
	args := []string{"build", "-o", bin + string(filepath.Separator)}
	for _, s := range ClusterServices {
		args = append(args, fmt.Sprintf("github.com/surge-events/surge/services/%s/cmd/%s", s, s))
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = src
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("build the services (run surge from the Surge source tree): %w\n%s", err, out)
	}
	return nil
}

// natsConfig is a cluster node's configuration, with the local stack's
// logins.
func (nd *natsNode) config(routePort int, routes []string) string {
	quoted := make([]string, len(routes))
	for i, r := range routes {
		quoted[i] = strconv.Quote(r)
	}
	return fmt.Sprintf(`server_name: %s
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: 16MB
max_pending: 64MB
jetstream {
  store_dir: %q
  max_memory_store: 256MB
  max_file_store: 8GB
}
cluster {
  name: surge-local
  listen: "127.0.0.1:%d"
  routes: [%s]
}
authorization {
  users = [
    { user: %q, password: %q }
    {
      user: %q, password: %q
      permissions: {
        publish: { allow: ["surge.in.%s", "surge.in.%s.>"] }
        subscribe: { allow: ["_INBOX_%s.>"] }
      }
    }
  ]
}
`, nd.name, nd.clientPort, nd.monitorPort, filepath.Join(nd.dir, "store"), routePort, strings.Join(quoted, ", "),
		ServiceUser, ServicePassword, DemoProducer.Name, DemoProducer.Password,
		DemoProducer.Tenant, DemoProducer.Tenant, DemoProducer.Tenant)
}

// natsCommand is the command running the node whose configuration is conf.
func (c *Cluster) natsCommand(conf string) *exec.Cmd {
	args := append(slices.Clone(c.natsServer[1:]), "-c", conf)
	return exec.Command(c.natsServer[0], args...)
}

func (c *Cluster) startNATS(ctx context.Context) error {
	const n = 3
	free, err := ports.Free(3 * n)
	if err != nil {
		return err
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", free[3*i+1]))
	}
	for i := range n {
		nd := &natsNode{
			name:        fmt.Sprintf("nats-%d", i),
			dir:         filepath.Join(c.opts.Dir, "nats", fmt.Sprintf("nats-%d", i)),
			clientPort:  free[3*i],
			monitorPort: free[3*i+2],
		}
		if err := os.MkdirAll(filepath.Join(nd.dir, "store"), 0o755); err != nil {
			return fmt.Errorf("nats store: %w", err)
		}
		conf := filepath.Join(nd.dir, "nats.conf")
		if err := os.WriteFile(conf, []byte(nd.config(free[3*i+1], routes)), 0o644); err != nil {
			return fmt.Errorf("nats config: %w", err)
		}
		p, err := spawn(c.natsCommand(conf), nd.dir, filepath.Join(nd.dir, "nats.log"), nil)
		if err != nil {
			return fmt.Errorf("start %s: %w", nd.name, err)
		}
		nd.proc = p
		c.nats = append(c.nats, nd)
	}
	for _, nd := range c.nats {
		url := fmt.Sprintf("http://127.0.0.1:%d/healthz", nd.monitorPort)
		if err := waitHTTP(ctx, url, nd.proc, natscluster.ReadyTimeout); err != nil {
			log := filepath.Join(nd.dir, "nats.log")
			return fmt.Errorf("%s: %w; log %s:\n%s", nd.name, err, log, logTail(log, 10))
		}
	}
	return nil
}

// NATSURLs are the client URLs of the three nodes.
func (c *Cluster) NATSURLs() []string {
	out := make([]string, len(c.nats))
	for i, nd := range c.nats {
		out[i] = fmt.Sprintf("nats://127.0.0.1:%d", nd.clientPort)
	}
	return out
}

// sinkAddrs is SURGE_CLICKHOUSE_ADDRS: one entry per shard, its replicas
// joined by "|".
func (c *Cluster) sinkAddrs() string {
	var shards []string
	for _, replicas := range c.ClickHouse.ReplicaAddrs() {
		shards = append(shards, strings.Join(replicas, "|"))
	}
	return strings.Join(shards, ",")
}

func (c *Cluster) startServices() error {
	free, err := ports.Free(2 * len(ClusterServices))
	if err != nil {
		return err
	}
	common := map[string]string{
		"SURGE_NATS_URL":         strings.Join(c.NATSURLs(), ","),
		"SURGE_NATS_USER":        ServiceUser,
		"SURGE_NATS_PASSWORD":    ServicePassword,
		"SURGE_STREAMS_REPLICAS": "3",
		// Every node holds a copy of every stream on this one disk: 1 GiB
		// per stream keeps the reservations within max_file_store.
		"SURGE_STREAMS_MAX_BYTES": strconv.Itoa(ClusterStreamMaxBytes),
		"SURGE_LOG_LEVEL":         c.opts.LogLevel,
	}
	shards := strconv.Itoa(c.opts.Shards)
	perService := map[string]map[string]string{
		"ingest":      {},
		"partitioner": {"SURGE_SHARDS": shards},
		"batcher":     {"SURGE_SHARDS": shards, "SURGE_OWNERSHIP": "lease"},
		"sink": {
			"SURGE_SHARDS": shards, "SURGE_OWNERSHIP": "lease",
			"SURGE_CLICKHOUSE_ADDRS":      c.sinkAddrs(),
			"SURGE_CLICKHOUSE_REPLICATED": "true",
			"SURGE_CLICKHOUSE_CLUSTER":    c.ClickHouse.Name,
			"SURGE_CLICKHOUSE_DATABASE":   c.Database,
		},
	}
	logs := filepath.Join(c.opts.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return fmt.Errorf("logs folder: %w", err)
	}
	c.common, c.perService = common, perService
	for si, svc := range ClusterServices {
		for i := range 2 {
			httpAddr := ""
			if svc == "ingest" {
				httpAddr = c.opts.IngestAddrs[i]
			}
			in := c.newInstance(svc, i, net.JoinHostPort("127.0.0.1", strconv.Itoa(free[2*si+i])), httpAddr)
			if err := in.spawn(c.opts.Dir); err != nil {
				return err
			}
			c.Instances = append(c.Instances, in)
		}
	}
	return nil
}

// newInstance describes the index-th process of svc: its name, addresses,
// log and environment.
func (c *Cluster) newInstance(svc string, index int, adminAddr, httpAddr string) *Instance {
	in := &Instance{
		Name:      fmt.Sprintf("%s-%d", svc, index),
		Service:   svc,
		AdminAddr: adminAddr,
	}
	in.LogPath = filepath.Join(c.opts.Dir, "logs", in.Name+".log")
	env := map[string]string{"SURGE_ADMIN_ADDR": in.AdminAddr, "OTEL_SERVICE_NAME": "surge-" + svc}
	maps.Copy(env, c.common)
	maps.Copy(env, c.perService[svc])
	maps.Copy(env, c.opts.ServiceEnv[svc])
	if httpAddr != "" {
		env["SURGE_HTTP_ADDR"] = httpAddr
		in.IngestURL = "http://" + httpAddr
	}
	in.env = env
	return in
}

// spawn starts the instance's process, its log opened by a line that
// marks the start (a log holds every run of the instance).
func (in *Instance) spawn(dir string) error {
	f, err := os.OpenFile(in.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("log of %s: %w", in.Name, err)
	}
	_, err = fmt.Fprintf(f, "%s %s at %s\n", InstanceStartMarker, in.Name, time.Now().UTC().Format(time.RFC3339Nano))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("log of %s: %w", in.Name, err)
	}
	p, err := spawn(exec.Command(filepath.Join(dir, "bin", in.Service)), dir, in.LogPath, in.env)
	if err != nil {
		return fmt.Errorf("start %s: %w", in.Name, err)
	}
	in.proc = p
	return nil
}

// InstanceStartMarker begins the line an instance's log gets before each
// start of its process.
const InstanceStartMarker = "===== start"

// spawn starts cmd in dir with proc.Start (its own process group, so a
// Ctrl-C in the terminal reaches only surge, which stops the children in
// order; killed should surge die), its output appended to logPath. env
// replaces the inherited SURGE_* variables.
func spawn(cmd *exec.Cmd, dir, logPath string, env map[string]string) (*proc.Process, error) {
	cmd.Dir = dir
	if env != nil {
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "SURGE_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	return proc.Start(cmd, logPath)
}

// waitHTTP polls url until it answers 200, p exits or timeout passes.
func waitHTTP(ctx context.Context, url string, p *proc.Process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := probe.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s: %s", timeout, last)
		}
		select {
		case <-p.Exited():
			return errors.New("exited at start")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) waitReady(ctx context.Context) error {
	for _, in := range c.Instances {
		if err := waitHTTP(ctx, "http://"+in.AdminAddr+"/readyz", in.proc, ClusterReadyTimeout); err != nil {
			return fmt.Errorf("%s: %w; log %s:\n%s", in.Name, err, in.LogPath, logTail(in.LogPath, 10))
		}
	}
	return nil
}

// PIDs maps every process the cluster started to its id.
func (c *Cluster) PIDs() map[string]int {
	out := map[string]int{}
	for _, in := range c.Instances {
		out[in.Name] = in.proc.PID()
	}
	if c.ClickHouse != nil {
		for _, s := range c.ClickHouse.Servers {
			out[fmt.Sprintf("clickhouse-%d-%d", s.Shard, s.Replica)] = s.PID()
		}
	}
	if c.ZooKeeper != nil {
		out["zookeeper"] = c.ZooKeeper.PID()
	}
	for _, nd := range c.nats {
		out[nd.name] = nd.proc.PID()
	}
	return out
}

// Info describes where the cluster listens, for InfoFile.
func (c *Cluster) Info() Info {
	info := Info{
		NATSURL: strings.Join(c.NATSURLs(), ","), NATSUser: ServiceUser, NATSPassword: ServicePassword,
		ClickHouse: c.ClickHouse.Addrs(), ClickHouseReplicas: c.ClickHouse.ReplicaAddrs(), Database: c.Database,
		ZooKeeper: c.ZooKeeper.Addr(), Admin: map[string]string{}, PIDs: c.PIDs(),
	}
	for _, s := range c.ClickHouse.Servers {
		info.HTTP = append(info.HTTP, s.HTTPAddr())
	}
	for _, in := range c.Instances {
		info.Admin[in.Name] = in.AdminAddr
		if in.IngestURL != "" {
			info.IngestURLs = append(info.IngestURLs, in.IngestURL)
		}
	}
	if len(info.IngestURLs) > 0 {
		info.IngestURL = info.IngestURLs[0]
	}
	return info
}

// Stop stops the services, two instances at a time in pipeline order,
// each with SIGTERM so it drains (SIGKILL after ClusterStopTimeout); then
// ClickHouse, ZooKeeper and the NATS nodes; then releases the folder.
func (c *Cluster) Stop() error {
	var errs []error
	for _, svc := range ClusterServices {
		var wg sync.WaitGroup
		for _, in := range c.Instances {
			if in.Service != svc {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = in.proc.Stop(ClusterStopTimeout)
			}()
		}
		wg.Wait()
	}
	for _, in := range c.Instances {
		if st := in.proc.ExitState(); st != nil && !st.Success() {
			errs = append(errs, fmt.Errorf("%s exited with %s; log %s", in.Name, st, in.LogPath))
		}
	}
	c.Instances = nil
	if c.ClickHouse != nil {
		c.ClickHouse.Stop()
		c.ClickHouse = nil
	}
	if c.ZooKeeper != nil {
		if err := c.ZooKeeper.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("zookeeper: %w", err))
		}
		c.ZooKeeper = nil
	}
	var wg sync.WaitGroup
	for _, nd := range c.nats {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = nd.proc.Stop(ClusterStopTimeout)
		}()
	}
	wg.Wait()
	c.nats = nil
	if err := c.lock.Unlock(); err != nil {
		errs = append(errs, fmt.Errorf("unlock %s: %w", c.opts.Dir, err))
	}
	c.lock = nil
	return errors.Join(errs...)
}

// logTail is the last n lines of a log file, for an error.
func logTail(path string, n int) string {
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

// The fault methods below break and mend a running cluster, one process
// at a time, for chaos tests. Each returns once the process is gone or,
// for a start, ready.

// Instance is the instance named name, nil when there is none.
func (c *Cluster) Instance(name string) *Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, in := range c.Instances {
		if in.Name == name {
			return in
		}
	}
	return nil
}

// PID is the instance's process id.
func (in *Instance) PID() int { return in.proc.PID() }

// Running reports whether the instance's process runs.
func (in *Instance) Running() bool { return in.proc.Running() }

// KillInstance SIGKILLs the instance's process and waits for it to exit.
func (c *Cluster) KillInstance(name string) error {
	in := c.Instance(name)
	if in == nil {
		return fmt.Errorf("no instance %s", name)
	}
	return in.proc.Kill()
}

// StopInstance stops the instance's process for good with SIGTERM, so it
// drains and hands its shards over (SIGKILL after ClusterStopTimeout).
func (c *Cluster) StopInstance(name string) error {
	in := c.Instance(name)
	if in == nil {
		return fmt.Errorf("no instance %s", name)
	}
	_ = in.proc.Stop(ClusterStopTimeout)
	if st := in.proc.ExitState(); st != nil && !st.Success() {
		return fmt.Errorf("%s exited with %s; log %s", in.Name, st, in.LogPath)
	}
	return nil
}

// RestartInstance starts a stopped or killed instance again with the same
// addresses and environment and waits until it is ready.
func (c *Cluster) RestartInstance(ctx context.Context, name string) error {
	in := c.Instance(name)
	if in == nil {
		return fmt.Errorf("no instance %s", name)
	}
	if in.Running() {
		return fmt.Errorf("%s runs already (pid %d)", name, in.PID())
	}
	if err := in.spawn(c.opts.Dir); err != nil {
		return err
	}
	return in.waitReady(ctx)
}

// AddInstance starts one more process of service (not ingest, whose
// instances listen on the addresses the cluster was given), named after
// the instances it has, and waits until it is ready.
func (c *Cluster) AddInstance(ctx context.Context, service string) (*Instance, error) {
	if _, ok := c.perService[service]; !ok || service == "ingest" {
		return nil, fmt.Errorf("cannot add an instance of %q", service)
	}
	free, err := ports.Free(1)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	n := 0
	for _, in := range c.Instances {
		if in.Service == service {
			n++
		}
	}
	in := c.newInstance(service, n, net.JoinHostPort("127.0.0.1", strconv.Itoa(free[0])), "")
	err = in.spawn(c.opts.Dir)
	if err == nil {
		c.Instances = append(c.Instances, in)
	}
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return in, in.waitReady(ctx)
}

// waitReady waits for the instance's /readyz.
func (in *Instance) waitReady(ctx context.Context) error {
	if err := waitHTTP(ctx, "http://"+in.AdminAddr+"/readyz", in.proc, ClusterReadyTimeout); err != nil {
		return fmt.Errorf("%s: %w; log %s:\n%s", in.Name, err, in.LogPath, logTail(in.LogPath, 10))
	}
	return nil
}

// NATSName is the server name of NATS node i ("nats-<i>").
func (c *Cluster) NATSName(i int) string { return c.nats[i].name }

// KillNATS SIGKILLs NATS node i and waits for it to exit.
func (c *Cluster) KillNATS(i int) error {
	if i < 0 || i >= len(c.nats) {
		return fmt.Errorf("no NATS node %d", i)
	}
	nd := c.nats[i]
	c.mu.Lock()
	p := nd.proc
	c.mu.Unlock()
	return p.Kill()
}

// RestartNATS starts NATS node i again on its ports and store and waits
// until it is healthy (JetStream current with its peers).
func (c *Cluster) RestartNATS(ctx context.Context, i int) error {
	if i < 0 || i >= len(c.nats) {
		return fmt.Errorf("no NATS node %d", i)
	}
	nd := c.nats[i]
	c.mu.Lock()
	p := nd.proc
	c.mu.Unlock()
	if p.Running() {
		return fmt.Errorf("%s runs already (pid %d)", nd.name, p.PID())
	}
	p, err := spawn(c.natsCommand(filepath.Join(nd.dir, "nats.conf")), nd.dir, filepath.Join(nd.dir, "nats.log"), nil)
	if err != nil {
		return fmt.Errorf("start %s: %w", nd.name, err)
	}
	c.mu.Lock()
	nd.proc = p
	c.mu.Unlock()
	if err := waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/healthz", nd.monitorPort), p, natscluster.ReadyTimeout); err != nil {
		log := filepath.Join(nd.dir, "nats.log")
		return fmt.Errorf("%s: %w; log %s:\n%s", nd.name, err, log, logTail(log, 10))
	}
	return nil
}

// Connect opens a client connection to the NATS cluster as the services'
// user, reconnecting for ever.
func (c *Cluster) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect(strings.Join(c.NATSURLs(), ","), nats.Name(name), nats.UserInfo(ServiceUser, ServicePassword),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("connect to the cluster: %w", err)
	}
	return nc, nil
}

// ErrNoLeader says a stream has no leader now.
var ErrNoLeader = errors.New("no leader")

// StreamLeader is the index of the NATS node leading stream, asked
// through js; ErrNoLeader while an election runs.
func (c *Cluster) StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, fmt.Errorf("stream %s: %w (%w)", stream, ErrNoLeader, err)
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("stream %s: %w", stream, ErrNoLeader)
	}
	return c.natsIndex(info.Cluster.Leader)
}

// natsIndex is the index of the node named name.
func (c *Cluster) natsIndex(name string) (int, error) {
	for i, nd := range c.nats {
		if nd.name == name {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%q is no node of the cluster", name)
}

// KillReplica SIGKILLs the ClickHouse server of replica r of shard s and
// waits for it to exit; RestartReplica starts it again.
func (c *Cluster) KillReplica(s, r int) error {
	srv, err := c.replica(s, r)
	if err != nil {
		return err
	}
	if srv.PID() == 0 {
		return fmt.Errorf("clickhouse %d-%d is not running", s, r)
	}
	if err := srv.Kill(); err != nil {
		return fmt.Errorf("kill clickhouse %d-%d: %w", s, r, err)
	}
	return nil
}

// RestartReplica starts the ClickHouse server of replica r of shard s
// again and waits until it accepts connections. A replica that refuses to
// start because columns were added while it was down (ClickHouse 18.16
// takes at most two missed columns on its own) is started once more with
// force_restore_data, the recovery an operator runs (README, "Typed
// columns").
func (c *Cluster) RestartReplica(ctx context.Context, s, r int) error {
	srv, err := c.replica(s, r)
	if err != nil {
		return err
	}
	err = srv.Start(ctx)
	if err == nil || !srv.StructureTooDifferent() {
		return err
	}
	if ferr := srv.ForceRestore(); ferr != nil {
		return errors.Join(err, ferr)
	}
	c.opts.Logf("clickhouse %d-%d: columns were added while it was down; restarting it with force_restore_data", s, r)
	return srv.Start(ctx)
}

func (c *Cluster) replica(s, r int) (*chserver.Server, error) {
	if s < 0 || s >= len(c.ClickHouse.Shards) || r < 0 || r >= len(c.ClickHouse.Shards[s]) {
		return nil, fmt.Errorf("no clickhouse replica %d of shard %d", r, s)
	}
	return c.ClickHouse.Shards[s][r], nil
}
