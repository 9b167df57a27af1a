// Package stack runs the whole Surge pipeline on one machine: an embedded
// NATS JetStream server, one clickhouse-server process per ClickHouse shard
// server, and the four services in this process. The local stack
// (`surge up`), the bench and the end-to-end tests all start it this way.
package stack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/services/batcher"
	"github.com/surge-events/surge/services/ingest"
	"github.com/surge-events/surge/services/partitioner"
	"github.com/surge-events/surge/services/sink"
)

// Options shape a local stack.
type Options struct {
	// Dir holds NATS and ClickHouse data. One stack at a time runs in a
	// folder: Start locks it (LockFile) and fails at once with an
	// *InUseError while another stack, in any process, has it.
	Dir string
	// ClickHouseDir holds the ClickHouse servers' data instead of Dir,
	// for a filesystem of its own; Dir when empty. ClickHouse creates and
	// deletes two to four files per column of every part, so the
	// filesystem under it weighs on its CPU (docs/performance.md).
	ClickHouseDir string
	// Fresh deletes the folder's data, and ClickHouseDir's, once its lock
	// is taken.
	Fresh bool
	// Shards is the number of logical shards.
	Shards int
	// ClickHouseServers is the number of clickhouse-server processes.
	ClickHouseServers int
	// NATSPort is the NATS client port; -1 picks a free one.
	NATSPort int
	// NATSSync is when JetStream flushes to disk: natsserver.SyncInterval
	// (the default) or natsserver.SyncAlways.
	NATSSync natsserver.Sync
	// MQTTPort opens NATS's MQTT listener: 0 leaves it off, -1 picks a
	// free port (Stack.MQTTPort says which).
	MQTTPort int
	// Producers are the NATS (and MQTT) users that may publish events of
	// their tenant to surge.in.<tenant>.>; DemoProducer when nil. The
	// services log in as ServiceUser.
	Producers []natsserver.User
	// HTTPAddr is where ingest listens.
	HTTPAddr string
	// Policy is the batch policy; zero means the default.
	Policy batch.Policy
	// SinkMaxInserts is the sink's ClickHouseConfig.MaxInserts; 0 keeps
	// the sink's default.
	SinkMaxInserts int
	// Database is the ClickHouse database; "surge" when empty.
	Database string
	// APIKeys maps API keys to tenants; empty turns auth off.
	APIKeys map[string]string
	// Schema is the typed columns' configuration of the batcher and the
	// sink; schema.DefaultConfig() when nil.
	Schema *schema.Config
	// Dedup is the batcher's event-level deduplication; the default (on)
	// when nil.
	Dedup *batcher.DedupConfig
	// Logger receives every service's logs; a no-op logger when nil.
	Logger *zap.Logger
	// TracerProvider traces the services; a no-op provider when nil.
	TracerProvider trace.TracerProvider
	// TracerProviders, when set, gives each service (ingest, partitioner,
	// batcher, sink) its own provider, so its spans carry its service.name;
	// it takes precedence over TracerProvider.
	TracerProviders func(service string) trace.TracerProvider
}

// The NATS logins of the local stack. The server listens on 127.0.0.1
// only; deployments set their own (deployments/nats/cluster.conf).
const (
	// ServiceUser may do anything: the services log in as it.
	ServiceUser     = "surge"
	ServicePassword = "surge-local"
)

// DemoProducer publishes events of tenant demo over NATS or MQTT.
var DemoProducer = natsserver.User{Name: "demo", Password: "demo-local", Tenant: "demo"}

// Part is one running service.
type Part struct {
	Name      string
	AdminAddr string
	Registry  *prometheus.Registry
	cancel    context.CancelFunc
	// done closes when Run has returned; err is what it returned.
	done chan struct{}
	err  error
}

// Stack is a running pipeline.
type Stack struct {
	NATS *server.Server
	// NATSAuth is how the services reach NATS, credentials included.
	NATSAuth service.NATSConfig
	// MQTTPort is where NATS takes MQTT connections; 0 when it does not.
	MQTTPort   int
	ClickHouse *chserver.Cluster
	Database   string
	// IngestURL is the base URL of the ingest HTTP API.
	IngestURL string
	// Parts in pipeline order: ingest, partitioner, batcher, sink.
	Parts []*Part

	opts Options
	lock *DirLock
	// builds make each service anew, by name, for StartPart.
	builds map[string]func(service.Deps) (runner, error)
	// mu guards Parts and retired while StopPart and StartPart run beside
	// readers such as Inserted.
	mu sync.Mutex
	// retired is what the stopped instances of a service counted of
	// each counter that Inserted and Accepted read, so they never go back.
	retired map[string]float64
}

// Start brings up servers and services and waits until every service is ready.
func Start(ctx context.Context, o Options) (*Stack, error) {
	if o.Shards == 0 {
		o.Shards = 8
	}
	if o.ClickHouseServers == 0 {
		o.ClickHouseServers = 2
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = "127.0.0.1:0"
	}
	if o.Database == "" {
		o.Database = "surge"
	}
	if o.Policy == (batch.Policy{}) {
		o.Policy = batch.DefaultPolicy()
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.TracerProvider == nil {
		o.TracerProvider = noop.NewTracerProvider()
	}
	if o.Dir == "" {
		return nil, errors.New("stack: a data folder (Options.Dir) is required")
	}
	if _, err := natsserver.ParseSync(string(o.NATSSync)); err != nil {
		return nil, err
	}
	lock, err := Lock(o.Dir)
	if err != nil {
		return nil, err
	}
	s := &Stack{opts: o, Database: o.Database, lock: lock}
	chDir := cmp.Or(o.ClickHouseDir, o.Dir)
	if err := os.MkdirAll(chDir, 0o755); err != nil {
		s.Stop()
		return nil, fmt.Errorf("clickhouse dir: %w", err)
	}
	if o.Fresh {
		for _, d := range slices.Compact([]string{o.Dir, chDir}) {
			if err := clearData(d); err != nil {
				s.Stop()
				return nil, err
			}
		}
	}

	if o.Producers == nil {
		o.Producers = []natsserver.User{DemoProducer}
	}
	users := append([]natsserver.User{{Name: ServiceUser, Password: ServicePassword}}, o.Producers...)
	ns, err := natsserver.Start(natsserver.Options{
		Port: o.NATSPort, StoreDir: filepath.Join(o.Dir, "nats"), Users: users, MQTTPort: o.MQTTPort,
		Sync: o.NATSSync,
	})
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.NATS = ns
	s.MQTTPort = natsserver.MQTTPort(ns)
	s.NATSAuth = service.DefaultNATSConfig()
	s.NATSAuth.URL = ns.ClientURL()
	s.NATSAuth.User, s.NATSAuth.Password = ServiceUser, ServicePassword
	ch, err := chserver.StartCluster(ctx, chDir, o.ClickHouseServers)
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.ClickHouse = ch
	if err := s.startServices(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Stack) deps(name string) service.Deps {
	tp := s.opts.TracerProvider
	if s.opts.TracerProviders != nil {
		tp = s.opts.TracerProviders(name)
	}
	return service.Deps{
		Logger:         s.opts.Logger.With(zap.String("service", name)),
		Registry:       prometheus.NewRegistry(),
		TracerProvider: tp,
	}
}

type runner interface {
	Run(ctx context.Context) error
	AdminAddr() string
}

func (s *Stack) startServices(ctx context.Context) error {
	admin := "127.0.0.1:0"

	icfg := ingest.DefaultConfig()
	icfg.NATS = s.NATSAuth
	icfg.HTTP.Addr = s.opts.HTTPAddr
	icfg.Admin.Addr = admin
	icfg.Ingest.APIKeys = s.opts.APIKeys

	pcfg := partitioner.DefaultConfig()
	pcfg.NATS = s.NATSAuth
	pcfg.Admin.Addr = admin
	pcfg.Shards = s.opts.Shards

	bcfg := batcher.DefaultConfig()
	bcfg.NATS = s.NATSAuth
	bcfg.Admin.Addr = admin
	bcfg.Shards = s.opts.Shards
	bcfg.Policy = s.opts.Policy
	if s.opts.Schema != nil {
		bcfg.Schema = *s.opts.Schema
	}
	if s.opts.Dedup != nil {
		bcfg.Dedup = *s.opts.Dedup
	}

	scfg := sink.DefaultConfig()
	scfg.NATS = s.NATSAuth
	scfg.Admin.Addr = admin
	scfg.Shards = s.opts.Shards
	scfg.ClickHouse.Addrs = s.ClickHouse.Addrs()
	scfg.ClickHouse.Database = s.opts.Database
	scfg.ClickHouse.Cluster = s.ClickHouse.Name
	if s.opts.SinkMaxInserts > 0 {
		scfg.ClickHouse.MaxInserts = s.opts.SinkMaxInserts
	}
	if s.opts.Schema != nil {
		scfg.Schema = *s.opts.Schema
	}

	for _, c := range []interface{ Validate() error }{icfg, pcfg, bcfg, scfg} {
		if err := c.Validate(); err != nil {
			return fmt.Errorf("stack config: %w", err)
		}
	}

	s.builds = map[string]func(service.Deps) (runner, error){
		"ingest": func(d service.Deps) (runner, error) {
			svc, err := ingest.New(icfg, d)
			if err == nil {
				s.IngestURL = "http://" + svc.Addr()
			}
			return svc, err
		},
		"partitioner": func(d service.Deps) (runner, error) { return partitioner.New(pcfg, d) },
		"batcher":     func(d service.Deps) (runner, error) { return batcher.New(bcfg, d) },
		"sink":        func(d service.Deps) (runner, error) { return sink.New(scfg, d) },
	}
	for _, name := range partOrder {
		p, err := s.run(name)
		if err != nil {
			return err
		}
		s.Parts = append(s.Parts, p)
	}
	return s.waitReady(ctx, s.Parts, 60*time.Second)
}

// partOrder is the pipeline's order, in which Start starts the services
// and Stop stops them.
var partOrder = []string{"ingest", "partitioner", "batcher", "sink"}

// run builds the service of that name and runs it until its Part is
// cancelled.
func (s *Stack) run(name string) (*Part, error) {
	deps := s.deps(name)
	svc, err := s.builds[name](deps)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", name, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	p := &Part{Name: name, AdminAddr: svc.AdminAddr(), Registry: deps.Registry, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = svc.Run(runCtx)
	}()
	return p, nil
}

// StopPart stops the running service of that name, as Stop does (a
// graceful drain), and leaves the rest of the stack running; StartPart
// starts it again. The bench stops the sink this way to fill BATCHES and
// then time the sink alone.
func (s *Stack) StopPart(name string) error {
	p := s.Part(name)
	if p == nil {
		return fmt.Errorf("stack: %s is not running", name)
	}
	p.cancel()
	<-p.done
	// Out of Parts and its counts into retired in one step, so Inserted
	// never goes back while a reader looks.
	s.mu.Lock()
	s.Parts = slices.DeleteFunc(s.Parts, func(q *Part) bool { return q == p })
	if s.retired == nil {
		s.retired = map[string]float64{}
	}
	for _, c := range countersKept {
		s.retired[c] += Sum(p.Registry, c)
	}
	s.mu.Unlock()
	if p.err != nil && !errors.Is(p.err, context.Canceled) {
		return fmt.Errorf("%s: %w", name, p.err)
	}
	return nil
}

// StartPart starts a new instance of a service StopPart stopped, with a
// new registry, and waits until it is ready.
func (s *Stack) StartPart(ctx context.Context, name string) (*Part, error) {
	if s.Part(name) != nil {
		return nil, fmt.Errorf("stack: %s is running already", name)
	}
	if s.builds[name] == nil {
		return nil, fmt.Errorf("stack: no service %q", name)
	}
	p, err := s.run(name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.Parts = append(s.Parts, p)
	slices.SortFunc(s.Parts, func(a, b *Part) int {
		return slices.Index(partOrder, a.Name) - slices.Index(partOrder, b.Name)
	})
	s.mu.Unlock()
	return p, s.waitReady(ctx, []*Part{p}, 60*time.Second)
}

func (s *Stack) waitReady(ctx context.Context, parts []*Part, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, p := range parts {
		for {
			if ready(ctx, p.AdminAddr) {
				break
			}
			select {
			case <-p.done:
				if p.err == nil {
					return fmt.Errorf("%s stopped at start", p.Name)
				}
				return fmt.Errorf("%s stopped at start: %w", p.Name, p.err)
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not ready after %s", p.Name, timeout)
			}
		}
	}
	return nil
}

// Part returns the running service of that name, nil if none.
func (s *Stack) Part(name string) *Part {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.Parts {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Stop shuts the services down in pipeline order, so each one's last
// output reaches the next before it stops, then stops the servers and
// releases the data folder. Whatever is still in flight stays durable in
// JetStream for the next start.
func (s *Stack) Stop() error {
	var errs []error
	s.mu.Lock()
	parts := s.Parts
	s.Parts = nil
	s.mu.Unlock()
	for _, p := range parts {
		p.cancel()
		<-p.done
		if p.err != nil && !errors.Is(p.err, context.Canceled) {
			errs = append(errs, fmt.Errorf("%s: %w", p.Name, p.err))
		}
	}
	if s.ClickHouse != nil {
		s.ClickHouse.Stop()
		s.ClickHouse = nil
	}
	if s.NATS != nil {
		s.NATS.Shutdown()
		s.NATS.WaitForShutdown()
		s.NATS = nil
	}
	if err := s.lock.Unlock(); err != nil {
		errs = append(errs, fmt.Errorf("unlock %s: %w", s.opts.Dir, err))
	}
	s.lock = nil
	return errors.Join(errs...)
}

// RemoveData deletes a stack's data folder; it fails with an *InUseError
// while a stack runs there.
func RemoveData(dir string) error {
	lock, err := Lock(dir)
	if err != nil {
		return err
	}
	err = clearData(dir)
	// The lock file goes last, while still held.
	return errors.Join(err, os.RemoveAll(dir), lock.Unlock())
}

// clearData deletes everything in dir but LockFile.
func clearData(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("clear %s: %w", dir, err)
	}
	for _, e := range entries {
		if e.Name() == LockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clear %s: %w", dir, err)
		}
	}
	return nil
}
