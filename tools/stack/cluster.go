package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natscluster"
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

// Cluster is a running local cluster.
type Cluster struct {
	ZooKeeper  *zookeeper.Server
	ClickHouse *chserver.Cluster
	// Instances in pipeline order, two per service.
	Instances []*Instance
	Database  string

	// nats are the NATS nodes, nil until they run.
	nats *natscluster.Cluster
	// natsServer is ClusterOptions.NATSServer, or the released binary.
	natsServer []string
	opts       ClusterOptions
	// common and perService are the services' environment, kept for
	// instances added later.
	common     map[string]string
	perService map[string]map[string]string
	lock       *DirLock
	// mu guards Instances once the cluster runs: the fault methods
	// (KillInstance, AddInstance, ...) may be called from any goroutine.
	// The NATS nodes guard their own processes.
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
	if c.nats != nil {
		for i := range c.nats.N() {
			out[c.nats.Name(i)] = c.nats.PID(i)
		}
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
	if c.nats != nil {
		c.nats.Shutdown()
		c.nats = nil
	}
	if err := c.lock.Unlock(); err != nil {
		errs = append(errs, fmt.Errorf("unlock %s: %w", c.opts.Dir, err))
	}
	c.lock = nil
	return errors.Join(errs...)
}
