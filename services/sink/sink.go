package sink

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
)

// TracerName names the sink's tracer.
const TracerName = "github.com/surge-events/surge/services/sink"

// ConsumerName is the durable BATCHES consumer of shard k.
func ConsumerName(k int) string { return "sink-shard-" + strconv.Itoa(k) }

// checkClickHouse is the sink's readiness check: it fails until the schema
// exists on every server and, in static mode, the shard consumers are
// created (in lease mode each shard makes its consumer when it is taken).
const checkClickHouse = "clickhouse"

// Service is the sink: one loop per owned shard moving batches from
// BATCHES into ClickHouse.
//
// Which shards a sink works on is static (listed in owned_shards, or all)
// or shared with the other sinks by leases (ownership: lease, package
// lease). In lease mode a shard's loop (its consumer, keepalive and
// watchdog) runs only while this instance holds the shard's lease; it
// stops at once when the lease is lost and releases the batch in hand
// unacked (Nak) for the next owner. Every ClickHouse insert attempt, every
// dead-letter publish and every ack first checks that the lease still
// holds, and an insert under way is cut when the lease is lost, so a sink
// that lost a shard (paused, partitioned) inserts nothing more for it. The
// one insert that may race with the takeover (sent just before the lease
// ran out, landing after the next owner looked the batch up) is caught by
// ClickHouse: on replicated tables the next owner sends the identical
// block (the batch's rows ClickHouse did not hold), which block
// deduplication stores once, and ReplacingMergeTree folds rows of equal
// key on merge. A batch the old owner inserted but could not ack comes
// back to the next owner, which finds its messages present and acks it
// as a duplicate.
type Service struct {
	cfg     Config
	host    *service.Host
	log     *zap.Logger
	metrics *metrics

	watchdogs *liveness.Watchdogs

	// fetchWait bounds one pull: the longest a shard loop takes to notice
	// shutdown when its shard is idle.
	fetchWait time.Duration
	// pendingEvery is how often consumer info is polled for the pending
	// gauges and the watchdogs.
	pendingEvery time.Duration
	// instance names this process in the lease bucket (lease mode).
	instance string
	// registryColumn tells the column DDL what the schema registry knows
	// of a typed column (its declared ClickHouse type, its path); nil
	// while the sink reads no registry.
	registryColumn RegistryColumn
	// schema is the registry of the agreed schema, once open.
	schema schemaRegistry
	// reconcileEvery is how often the reconciler runs; reconcileEvery
	// when zero.
	reconcileEvery time.Duration
}

// natsTimeout bounds one request to JetStream: an ack, a dead-letter
// publish, a consumer info or create.
const natsTimeout = 5 * time.Second

// New checks cfg and deps and opens the admin listener; it does no other I/O.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Schema.Load(); err != nil {
		return nil, fmt.Errorf("sink config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:   "sink",
		Common: cfg.Common,
		Shards: cfg.Shards,
	}, deps)
	if err != nil {
		return nil, err
	}
	host.Admin().NotReady(checkClickHouse, "creating schema and consumers")
	s := &Service{
		cfg:          cfg,
		host:         host,
		log:          host.Logger,
		metrics:      newMetrics(host.Registry),
		watchdogs:    host.Watchdogs(cfg.StallTimeout),
		fetchWait:    time.Second,
		pendingEvery: liveness.PollEvery(cfg.StallTimeout),
		instance:     lease.NewInstanceID(),
	}
	if cfg.Leased() {
		lease.ExportInstance(host.Registry, "sink", s.instance)
	}
	if cfg.Schema.Mode != schema.Off {
		s.registryColumn = s.schema.column
	}
	return s, nil
}

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.host.AdminAddr() }

// Run connects to NATS and every ClickHouse server, creates the schema and
// the shard consumers, and moves batches until ctx ends. Then each shard
// loop finishes the batch in hand (an insert is never cut), acks it, and
// the connections close. Returns nil on a clean shutdown.
func (s *Service) Run(ctx context.Context) error { return s.host.Run(ctx, s.body) }

// body is the sink's work inside the service lifecycle.
func (s *Service) body(ctx context.Context, conn service.Conn) error {
	servers := make([]*server, 0, len(s.cfg.ClickHouse.Addrs))
	defer func() {
		for _, srv := range servers {
			if err := srv.Close(); err != nil {
				s.log.Warn("close clickhouse", zap.String("addr", srv.addr), zap.Error(err))
			}
		}
	}()
	for _, addr := range s.cfg.ClickHouse.Addrs {
		srv, err := openServer(s.cfg.ClickHouse, addr)
		if err != nil {
			return err
		}
		srv.turnWait = s.metrics.turnWait.WithLabelValues(addr)
		servers = append(servers, srv)
	}
	shareKeeper(s.cfg.ClickHouse, servers, s.log, s.metrics, s.registryColumn)
	if err := s.ensureSchemas(ctx, servers); err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait() // before the servers close
	if s.cfg.Schema.Mode != schema.Off {
		wg.Go(func() { s.runSchema(ctx, conn.JS, servers) })
	}
	wg.Go(func() { s.runEraser(ctx, conn.JS, servers) })

	running := func() {
		s.host.Admin().Ready(checkClickHouse)
		if s.cfg.Leased() {
			s.log.Info("sink running on the shards this instance leases", zap.String("instance", s.instance),
				zap.Int("shards", s.cfg.Shards), zap.Strings("clickhouse", s.cfg.ClickHouse.Addrs))
			return
		}
		s.log.Info("sink running", zap.Ints("shards", s.cfg.OwnedShards()), zap.Strings("clickhouse", s.cfg.ClickHouse.Addrs))
	}
	owned := s.cfg.OwnedShards()
	owner, err := lease.OwnerFor(conn.JS, "sink", s.instance, s.cfg.Ownership, s.cfg.Streams.Replicas, s.log)
	if err != nil {
		return err
	}
	if s.cfg.Leased() {
		// Ready once the schema is there: an instance that holds no shard
		// yet (or none at all, with more sinks than shards) is healthy.
		running()
	}
	var started atomic.Int64
	sup := &shard.Supervisor{
		Owner: owner,
		// A new loop for every tenure: it looks its first batch up in
		// ClickHouse, never keeps a watermark from an earlier one (another sink may
		// have landed batches meanwhile). Static shards are ready once
		// every one has its consumer.
		Start: func(ctx context.Context, k int, holds func() bool) (shard.Loop, error) {
			l := s.newShardLoop(k, conn.JS, servers[s.cfg.ServerOf(k)])
			l.holds, l.info = holds, conn.JS
			subject := streams.LandedSubject(k)
			l.notify = func(seq uint64) {
				// A hint, on core NATS: a notice lost costs the batcher
				// one early cut (batch.Policy.MinAge), nothing else.
				_ = conn.NC.Publish(subject, strconv.AppendUint(nil, seq, 10))
			}
			if err := l.createConsumer(ctx); err != nil {
				return nil, err
			}
			if !s.cfg.Leased() && started.Add(1) == int64(len(owned)) {
				running()
			}
			return l, nil
		},
		Poller: liveness.Poller{
			Every:     s.pendingEvery,
			Timeout:   natsTimeout,
			Connected: conn.NC.IsConnected,
			Log:       s.log,
		},
		Log: s.log,
	}
	if err := sup.Run(ctx); err != nil {
		return err
	}
	s.log.Info("sink drained")
	return nil
}

// ensureSchemas creates the schema on every server, retrying while a
// server is unreachable: a shard server that starts after the sink delays
// it rather than failing it.
func (s *Service) ensureSchemas(ctx context.Context, servers []*server) error {
	for _, srv := range servers {
		err := retry.Do(ctx, s.cfg.Retry, func() error {
			sctx, cancel := context.WithTimeout(ctx, s.cfg.ClickHouse.InsertTimeout)
			defer cancel()
			err := srv.EnsureSchema(sctx)
			if err != nil && Classify(err) == Permanent {
				return retry.Permanent(err)
			}
			return err
		}, func(attempt int, err error, wait time.Duration) {
			s.log.Warn("clickhouse not ready, retrying", zap.String("addr", srv.addr),
				zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		})
		if err != nil {
			return err
		}
	}
	return nil
}
