package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/lease"
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
// ran out, landing after the next owner read the watermark) is caught by
// ClickHouse: on replicated tables the next owner sends the identical
// block (the rows above the same watermark), which block deduplication
// stores once, and ReplacingMergeTree folds rows of equal key on merge.
// A batch the old owner inserted but could not ack comes back to the next
// owner at or below the watermark and is acked as a duplicate.
type Service struct {
	cfg     Config
	host    *service.Host
	log     *zap.Logger
	metrics *metrics

	watchdogs *service.Watchdogs

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

// pollEvery is how often the shard consumers' state is read: often enough
// that a stall is noticed within a fifth of the stall timeout, at most
// every 5s (the pending gauges), at least every 100ms.
func pollEvery(stallTimeout time.Duration) time.Duration {
	return min(5*time.Second, max(stallTimeout/5, 100*time.Millisecond))
}

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
		pendingEvery: pollEvery(cfg.StallTimeout),
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
		servers = append(servers, srv)
	}
	shareKeeper(s.cfg.ClickHouse, servers, s.log, s.metrics, s.registryColumn)
	if err := s.ensureSchemas(ctx, servers); err != nil {
		return err
	}

	loops := &shard.Running[*shardLoop]{}
	var wg sync.WaitGroup
	defer wg.Wait() // before the servers close
	if s.cfg.Schema.Mode != schema.Off {
		wg.Go(func() { s.runSchema(ctx, conn.JS, servers) })
	}

	if !s.cfg.Leased() {
		owned := s.cfg.OwnedShards()
		started := make([]*shardLoop, 0, len(owned))
		for _, k := range owned {
			l := s.newShardLoop(k, conn.JS, servers[s.cfg.ServerOf(k)])
			if err := l.createConsumer(ctx); err != nil {
				return err
			}
			started = append(started, l)
		}
		s.host.Admin().Ready(checkClickHouse)
		s.log.Info("sink running", zap.Ints("shards", owned), zap.Strings("clickhouse", s.cfg.ClickHouse.Addrs))
		for _, l := range started {
			loops.Add(l.k, l)
			wg.Go(func() { l.run(ctx) })
		}
		wg.Go(func() { s.pollPending(ctx, conn.JS, loops) })
		wg.Wait()
		s.log.Info("sink drained")
		return nil
	}

	owner, err := lease.NewOwner(conn.JS, lease.Config{
		Service:  "sink",
		Instance: s.instance,
		Shards:   s.cfg.Shards,
		TTL:      s.cfg.LeaseTTL,
		Replicas: s.cfg.Streams.Replicas,
	}, s.log)
	if err != nil {
		return err
	}
	// Ready once the schema is there: an instance that holds no shard yet
	// (or none at all, with more sinks than shards) is healthy.
	s.host.Admin().Ready(checkClickHouse)
	s.log.Info("sink running on the shards this instance leases", zap.String("instance", s.instance),
		zap.Int("shards", s.cfg.Shards), zap.Strings("clickhouse", s.cfg.ClickHouse.Addrs))
	wg.Go(func() { s.pollPending(ctx, conn.JS, loops) })
	err = owner.Run(ctx, func(ctx context.Context, k int) {
		// A new loop for every tenure: its watermark is read again from
		// ClickHouse, never kept from an earlier one (another sink may have
		// landed batches meanwhile).
		l := s.newShardLoop(k, conn.JS, servers[s.cfg.ServerOf(k)])
		l.holds = func() bool { return owner.Holds(k) }
		// A failure here ends the run; the owner starts it again at its
		// next round while it holds the lease.
		if err := l.createConsumer(ctx); err != nil {
			if ctx.Err() == nil {
				l.log.Error("shard not started: its consumer could not be made", zap.Error(err))
			}
			return
		}
		loops.Add(l.k, l)
		defer stopped(loops, l)
		l.log.Info("shard started")
		l.run(ctx)
		l.log.Info("shard stopped")
	})
	if err != nil {
		return err
	}
	s.log.Info("sink drained")
	return nil
}

// stopped forgets a loop that stopped: its stall, if any, is over, and
// its backlog is the next owner's to report.
func stopped(loops *shard.Running[*shardLoop], l *shardLoop) {
	loops.Remove(l.k, l)
	l.w.Check(0)
	l.m.pending.Set(0)
	l.m.ackPending.Set(0)
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

// pollPending keeps surge_sink_consumer_pending and _ack_pending current
// and hands each shard's backlog to its watchdog.
func (s *Service) pollPending(ctx context.Context, js jetstream.JetStream, loops *shard.Running[*shardLoop]) {
	t := time.NewTicker(s.pendingEvery)
	defer t.Stop()
	for {
		for _, l := range loops.All() {
			backlog, err := s.backlog(ctx, js, l)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Debug("shard backlog", zap.Int("shard", l.k), zap.Error(err))
				}
				continue
			}
			l.w.Check(backlog)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// backlog is the number of batches of shard l.k waiting or unacked. While
// the shard's consumer is missing (a NATS server that lost its store), it
// is the number of the shard's batches in BATCHES, a work queue.
func (s *Service) backlog(ctx context.Context, js jetstream.JetStream, l *shardLoop) (uint64, error) {
	ictx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	cons, err := js.Consumer(ictx, streams.Batches, ConsumerName(l.k))
	if err == nil {
		info := cons.CachedInfo()
		l.m.pending.Set(float64(info.NumPending))
		l.m.ackPending.Set(float64(info.NumAckPending))
		return info.NumPending + uint64(info.NumAckPending), nil
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, fmt.Errorf("consumer %s: %w", ConsumerName(l.k), err)
	}
	stream, err := js.Stream(ictx, streams.Batches)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", streams.Batches, err)
	}
	subject := streams.BatchesSubject(l.k)
	info, err := stream.Info(ictx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", streams.Batches, err)
	}
	n := info.State.Subjects[subject]
	l.m.pending.Set(float64(n))
	l.m.ackPending.Set(0)
	return n, nil
}
