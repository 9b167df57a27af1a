package stack

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
)

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

func (c *Cluster) waitReady(ctx context.Context) error {
	for _, in := range c.Instances {
		if err := waitHTTP(ctx, "http://"+in.AdminAddr+"/readyz", in.proc, ClusterReadyTimeout); err != nil {
			return fmt.Errorf("%s: %w; log %s:\n%s", in.Name, err, in.LogPath, proc.Tail(in.LogPath, 10))
		}
	}
	return nil
}

// The fault methods below break and mend a running cluster's service
// instances, one process at a time, for chaos tests (clusternats.go and
// clusterclickhouse.go hold those of the NATS nodes and the ClickHouse
// replicas). Each returns once the process is gone or, for a start,
// ready.

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
		return fmt.Errorf("%s: %w; log %s:\n%s", in.Name, err, in.LogPath, proc.Tail(in.LogPath, 10))
	}
	return nil
}
