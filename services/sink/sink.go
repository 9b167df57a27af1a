package sink

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
)

// TracerName names the sink's tracer.
const TracerName = "github.com/surge-events/surge/services/sink"

// ConsumerName is the durable BATCHES consumer of shard k.
func ConsumerName(k int) string { return "sink-shard-" + strconv.Itoa(k) }

// checkClickHouse is the sink's readiness check: it fails until the schema
// exists on every server and the shard consumers are created.
const checkClickHouse = "clickhouse"

// Service is the sink: one loop per owned shard moving batches from
// BATCHES into ClickHouse.
type Service struct {
	cfg     Config
	host    *service.Host
	log     *zap.Logger
	metrics *metrics

	// fetchWait bounds one pull: the longest a shard loop takes to notice
	// shutdown when its shard is idle.
	fetchWait time.Duration
	// pendingEvery is how often consumer info is polled for the pending gauge.
	pendingEvery time.Duration
}

// New checks cfg and deps and opens the admin listener; it does no other I/O.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:    "sink",
		NATS:    cfg.NATS,
		Streams: cfg.Streams,
		Admin:   cfg.Admin,
	}, deps)
	if err != nil {
		return nil, err
	}
	host.Admin().NotReady(checkClickHouse, "creating schema and consumers")
	return &Service{
		cfg:          cfg,
		host:         host,
		log:          host.Logger,
		metrics:      newMetrics(host.Registry),
		fetchWait:    time.Second,
		pendingEvery: 5 * time.Second,
	}, nil
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
	if err := s.ensureSchemas(ctx, servers); err != nil {
		return err
	}

	var loops []*shardLoop
	for _, k := range s.cfg.OwnedShards() {
		cons, err := conn.JS.CreateOrUpdateConsumer(ctx, streams.Batches, jetstream.ConsumerConfig{
			Durable:       ConsumerName(k),
			Description:   "Surge sink of shard " + strconv.Itoa(k),
			FilterSubject: streams.BatchesSubject(k),
			AckPolicy:     jetstream.AckExplicitPolicy,
			// One batch in flight keeps the shard's inserts in sequence
			// order, which the watermark relies on.
			MaxAckPending: 1,
			AckWait:       s.cfg.AckWait(),
			MaxDeliver:    -1,
		})
		if err != nil {
			return fmt.Errorf("create consumer %s: %w", ConsumerName(k), err)
		}
		loops = append(loops, s.newShardLoop(k, cons, conn.JS, servers[s.cfg.ServerOf(k)]))
	}

	s.host.Admin().Ready(checkClickHouse)
	s.log.Info("sink running", zap.Ints("shards", s.cfg.OwnedShards()), zap.Strings("clickhouse", s.cfg.ClickHouse.Addrs))

	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Go(func() { l.run(ctx) })
	}
	wg.Go(func() { s.pollPending(ctx, loops) })
	wg.Wait()
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

// pollPending keeps surge_sink_consumer_pending current.
func (s *Service) pollPending(ctx context.Context, loops []*shardLoop) {
	t := time.NewTicker(s.pendingEvery)
	defer t.Stop()
	for {
		for _, l := range loops {
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			info, err := l.cons.Info(ictx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					s.log.Debug("consumer info", zap.Int("shard", l.k), zap.Error(err))
				}
				continue
			}
			l.m.pending.Set(float64(info.NumPending))
			l.m.ackPending.Set(float64(info.NumAckPending))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
