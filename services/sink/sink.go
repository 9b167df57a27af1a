package sink

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
)

// TracerName names the sink's tracer.
const TracerName = "github.com/surge-events/surge/services/sink"

// ConsumerName is the durable BATCHES consumer of shard k.
func ConsumerName(k int) string { return "sink-shard-" + strconv.Itoa(k) }

// Service is the sink: one loop per owned shard moving batches from
// BATCHES into ClickHouse.
type Service struct {
	cfg     Config
	log     *zap.Logger
	tracer  trace.Tracer
	metrics *metrics
	admin   *service.Admin

	// fetchWait bounds one pull: the longest a shard loop takes to notice
	// shutdown when its shard is idle.
	fetchWait time.Duration
	// pendingEvery is how often consumer info is polled for the pending gauge.
	pendingEvery time.Duration
}

// New checks cfg and opens the admin listener; it does no other I/O.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sink config: %w", err)
	}
	if deps.Logger == nil {
		deps.Logger = zap.NewNop()
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	if deps.TracerProvider == nil {
		deps.TracerProvider = noop.NewTracerProvider()
	}
	admin, err := service.NewAdmin(cfg.Admin.Addr, deps.Registry, deps.Logger)
	if err != nil {
		return nil, err
	}
	return &Service{
		cfg:          cfg,
		log:          deps.Logger,
		tracer:       deps.TracerProvider.Tracer(TracerName),
		metrics:      newMetrics(deps.Registry),
		admin:        admin,
		fetchWait:    time.Second,
		pendingEvery: 5 * time.Second,
	}, nil
}

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.admin.Addr() }

// Run connects to NATS and every ClickHouse server, creates the schema and
// the shard consumers, and moves batches until ctx ends. Then each shard
// loop finishes the batch in hand (an insert is never cut), acks it, and
// the connections close. Returns nil on a clean shutdown.
func (s *Service) Run(ctx context.Context) (err error) {
	// The admin server outlives ctx until the drain is over, so /metrics
	// answers while the last batches land.
	stopAdmin := s.admin.Start()
	defer func() {
		if aerr := stopAdmin(); aerr != nil && err == nil {
			err = aerr
		}
	}()

	err = s.run(ctx)
	if err != nil && ctx.Err() != nil {
		// Asked to stop while starting: not a failure.
		s.log.Info("stopped before start completed", zap.Error(err))
		return nil
	}
	return err
}

func (s *Service) run(ctx context.Context) error {
	nc, js, err := service.ConnectNATS(ctx, s.cfg.NATS, "surge-sink", s.log)
	if err != nil {
		return err
	}
	defer func() {
		if derr := service.DrainNATS(nc, 10*time.Second); derr != nil {
			s.log.Warn("nats drain", zap.Error(derr))
		}
	}()
	if err := streams.Ensure(ctx, js, s.cfg.Streams); err != nil {
		return err
	}

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
		cons, err := js.CreateOrUpdateConsumer(ctx, streams.Batches, jetstream.ConsumerConfig{
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
		loops = append(loops, newShardLoop(s, k, cons, js, servers[s.cfg.ServerOf(k)]))
	}

	s.admin.SetReady(true)
	defer s.admin.SetReady(false)
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
		for attempt := 1; ; attempt++ {
			sctx, cancel := context.WithTimeout(ctx, s.cfg.ClickHouse.InsertTimeout)
			err := srv.EnsureSchema(sctx)
			cancel()
			if err == nil {
				break
			}
			if Classify(err) == Permanent {
				return err
			}
			s.log.Warn("clickhouse not ready, retrying", zap.String("addr", srv.addr), zap.Int("attempt", attempt), zap.Error(err))
			if !sleep(ctx, backoff(s.cfg.Retry, attempt)) {
				return ctx.Err()
			}
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
			s.metrics.pending.WithLabelValues(l.label).Set(float64(info.NumPending))
			s.metrics.ackPending.WithLabelValues(l.label).Set(float64(info.NumAckPending))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// backoff is the wait before retry attempt (1-based): Initial doubling up
// to Max.
func backoff(c RetryConfig, attempt int) time.Duration {
	d := c.Initial
	for i := 1; i < attempt && d < c.Max; i++ {
		d *= 2
	}
	return min(d, c.Max)
}

// sleep waits d or until ctx ends; it reports whether the wait completed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
