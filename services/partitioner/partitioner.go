// Package partitioner consumes INGEST, spreads each request's events over
// the shards of EVENTS by their key, and acks a request only once every
// shard group of it is durable in EVENTS.
//
// INGEST holds two kinds of message: ingest's encoded requests
// (ingest.<tenant>) and the JSON that NATS and MQTT producers publish
// straight to surge.in.<tenant>.<anything>, which the partitioner
// validates itself (see parseProducerMessage).
//
// Fairness between tenants: every tenant with work has its own durable
// consumer of INGEST (ConsumerName, filtering FilterSubjects), shared by
// every partitioner process, so adding processes adds throughput. The
// workers take turns round-robin over the tenants with work, each turn at
// most fetch_batch messages (see scheduler), so one tenant's backlog
// delays another tenant's requests by about one round of turns, not by
// the backlog. Discovery (see discover.go) finds the tenants with work
// from INGEST's per-subject counts and makes their consumers; a consumer
// nobody pulls from for tenant_idle is removed by the server. Within a
// tenant, requests are taken in stream order.
//
// A redelivered request republishes the same message ids
// (<ingest seq>:<shard>), which EVENTS drops as duplicates. A request's
// shard groups are published together, without waiting for one another,
// so a hot key that makes one shard's groups large holds back no other
// shard's.
//
// Back-pressure: while BATCHES holds more than max_batches_backlog
// batches (the sinks are behind), the workers fetch nothing of the
// tenants with a backlog, so that work waits in INGEST, where the
// tenants' turns apply, not in the shards' batchers and sinks, while the
// tenants without one go on (see gate and scheduler). A hold is no stall.
//
// Liveness: the consumers' AckWait is short (seconds), so the requests a
// crashed or cut-off partitioner held are redelivered within seconds, and
// a worker keeps the requests it holds alive with InProgress while it
// waits for PubAcks. A watchdog on the input names any stall (work
// pending, nothing settled for stall_timeout) and recreates the
// consumers; a worker recreates a consumer it finds gone, and discovery
// one whose tenant's messages wait unfetched for stall_timeout while
// other tenants flow.
package partitioner

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
)

// Service is a partitioner.
type Service struct {
	cfg    Config
	host   *service.Host
	logger *zap.Logger
	tracer trace.Tracer
	m      *metrics
	// parser validates the JSON of NATS and MQTT producers.
	parser *event.Parser
	// wd watches the input for stalls.
	wd *liveness.Watchdog
	// failure is the last error that kept a request from being settled,
	// cleared by the next ack: the stall report says why.
	failure atomic.Pointer[string]
	// erased refuses producers' events of erased users (erasure.go).
	erased *erased
	// gate says when the sinks are behind, and the tenants with a backlog
	// wait (gate.go).
	gate *gate
}

// New builds a partitioner and opens its admin listener; it does no
// network I/O to NATS.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("partitioner config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:   "partitioner",
		Common: cfg.Common,
		Shards: cfg.Shards,
		JetStream: []jetstream.JetStreamOpt{
			jetstream.WithPublishAsyncMaxPending(cfg.MaxPublishPending),
			jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout),
		},
	}, deps)
	if err != nil {
		return nil, err
	}
	host.Admin().NotReady(checkConsumer, "INGEST not open yet")
	s := &Service{
		cfg:    cfg,
		host:   host,
		logger: host.Logger,
		tracer: host.Tracer,
		m:      newMetrics(host.Registry, cfg.Shards),
		parser: &event.Parser{Limits: event.Limits{MaxEvents: cfg.Producers.MaxEvents, MaxEventBytes: cfg.Producers.MaxEventBytes}},
		wd:     host.Watchdogs(cfg.StallTimeout).For("input"),
	}
	s.gate = newGate(s, cfg.batchesBound())
	return s, nil
}

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.host.AdminAddr() }

// Run partitions until ctx ends, then stops fetching and settles every
// fetched message (PubAcks awaited, acks sent) before the connection
// drains.
func (s *Service) Run(ctx context.Context) error {
	return s.host.Run(ctx, s.partition)
}

// partition is the body of the lifecycle: it readies INGEST for the
// tenants' consumers and runs the workers, discovery and the lag poller
// until ctx ends.
func (s *Service) partition(ctx context.Context, conn service.Conn) error {
	src := newSource(s, conn.JS)
	// A fresh cluster may still be electing the stream's leader. The
	// server's reason shows on /readyz until INGEST can be read.
	err := retry.Do(ctx, s.cfg.Retry, func() error { return src.open(ctx) }, func(attempt int, err error, wait time.Duration) {
		s.host.Admin().NotReady(checkConsumer, err.Error())
		s.logger.Warn("open INGEST, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err != nil {
		return err // ctx ended
	}
	src.ready() // unless the server refuses a tenant's consumer
	s.wd.Idle() // the stall clock starts with the workers, not at New
	read := batchesIn(conn.JS)
	if s.gate.on() {
		// Read once before the workers start: a partitioner started
		// beside a full BATCHES fetches nothing.
		s.gate.poll(ctx, read)
	}
	s.logger.Info("partitioning", zap.Int("shards", s.cfg.Shards), zap.Int("workers", s.cfg.Workers), zap.Duration("ack_wait", s.cfg.AckWait),
		zap.Int("max_batches_backlog", s.gate.bound))

	var wg sync.WaitGroup
	if s.gate.on() {
		wg.Go(func() { s.gate.run(ctx, read) })
	}
	// The tenants' quotas pace their turns; the workers start once the
	// limits were read, so a backlog is paced from its first turn.
	pc := newPace(s, conn)
	pc.run(ctx, &wg, apiTimeout)
	src.sched.paceBy(pc, s.cfg.FetchBatch)
	s.erased = newErased(conn.JS, s.cfg.Streams.Replicas, s.host.Registry, s)
	wg.Go(func() { s.erased.w.Run(ctx) })
	poller := liveness.Poller{Every: s.cfg.InfoInterval, Timeout: 2 * apiTimeout, Connected: conn.NC.IsConnected, Log: s.logger}
	wg.Go(func() { poller.Run(ctx, func() []liveness.Unit { return []liveness.Unit{inputUnit{s: s, src: src}} }) })
	wg.Go(func() { src.runDiscovery(ctx) })
	for range s.cfg.Workers {
		w := &worker{s: s, js: conn.JS, groups: make([][]event.Event, s.cfg.Shards), keep: liveness.Keepalive{Every: s.cfg.AckWait / 3}}
		wg.Go(func() { w.run(ctx, src) })
	}
	wg.Wait()
	return nil
}
