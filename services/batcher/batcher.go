// Package batcher cuts each owned shard of EVENTS into batches of whole
// messages, encodes them by column and publishes them to BATCHES.
//
// A batch is a contiguous run of one shard's EVENTS sequences, named
// <shard>:<first>-<last>. Each shard loop starts after the last batch of
// its shard in BATCHES, reads EVENTS with an ordered consumer, and purges
// EVENTS below every batch it has published once PurgeDelay has passed, so
// no state lives outside the streams and a restart never re-cuts published
// events differently while their batch is still in BATCHES.
//
// The purge waits because JetStream rebuilds its duplicate map after a
// restart from the messages still stored: a partitioner that republishes
// a group after a NATS restart (its INGEST ack was lost) is recognised only
// while the first copy is in EVENTS. The price: a batcher that restarts
// after the sink has consumed every batch of a shard re-reads up to
// PurgeDelay of events, whose rows the sink drops below its watermark.
//
// A shard that has events to read, or a batch waiting for its PubAck, and
// makes no progress for StallTimeout is stalled: a watchdog logs it,
// counts it, shows it on /readyz and has the shard recreate its events
// consumer from where it stopped reading, which cures a consumer whose
// server-side state was lost (a NATS restart, a stream leader change)
// sooner than the client library notices the missing heartbeats.
//
// Which shards a batcher works on is static (listed in owned_shards, or
// all) or shared by leases with the other batchers (ownership: lease,
// package lease): then shard loops start and stop as the leases come and
// go, and every publish of a shard (batch or dead letter) first checks
// that its lease still holds, so a batcher that lost a shard (paused,
// partitioned) publishes nothing more for it. The one publish that may
// race with the takeover is caught by the batch's Nats-Msg-Id or, further
// on, by the sink's watermark.
//
// Files: batcher.go runs the shard loops inside the service lifecycle,
// shard.go is one shard's loop (resume, consume, cut, finish), publish.go
// sends a batch, purge.go drops EVENTS below published batches, watch.go
// checks every shard's backlog for stalls, trace.go gathers a batch's
// trace context, deadletter.go sets corrupt messages aside.
package batcher

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
)

// Service is a batcher.
type Service struct {
	cfg       Config
	host      *service.Host
	m         *metrics
	watchdogs *liveness.Watchdogs
	// instance names this process in the lease bucket.
	instance string
	// typedMetrics are the schema series; nil when typed columns are off.
	typedMetrics *typedMetrics
	// dedupMetrics are the deduplication series; nil when dedup is off.
	dedupMetrics *dedupMetrics
}

// New validates cfg and deps and opens the admin listener; it does no
// network I/O to NATS.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Schema.Load(); err != nil {
		return nil, fmt.Errorf("batcher config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("batcher config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:   "batcher",
		Common: cfg.Common,
		Shards: cfg.Shards,
	}, deps)
	if err != nil {
		return nil, err
	}
	s := &Service{
		cfg: cfg, host: host, m: newMetrics(host.Registry), watchdogs: host.Watchdogs(cfg.StallTimeout),
		instance: lease.NewInstanceID(),
	}
	if cfg.Schema.Mode != schema.Off {
		s.typedMetrics = newTypedMetrics(host.Registry, cfg.Schema)
	}
	if cfg.Dedup.Enabled {
		s.dedupMetrics = newDedupMetrics(host.Registry)
	}
	if cfg.Leased() {
		lease.ExportInstance(host.Registry, "batcher", s.instance)
	}
	return s, nil
}

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.host.AdminAddr() }

// Close releases the admin listener of a batcher that was never run.
func (s *Service) Close() error { return s.host.Close() }

// Run batches every owned shard until ctx ends; each shard then publishes
// its partial batch and purges EVENTS below it before Run drains the
// connection and returns. It returns nil on a clean shutdown.
func (s *Service) Run(ctx context.Context) error {
	return s.host.Run(ctx, s.body)
}

// body runs one loop per owned shard, and the poller that watches them,
// until ctx ends and every loop has finished its last batch.
func (s *Service) body(ctx context.Context, conn service.Conn) error {
	events, err := s.stream(ctx, conn.JS, streams.Events)
	if err != nil {
		return err
	}
	batches, err := s.stream(ctx, conn.JS, streams.Batches)
	if err != nil {
		return err
	}
	var dedupStream jetstream.Stream
	if s.cfg.Dedup.Enabled {
		if dedupStream, err = s.ensureDedup(ctx, conn.JS); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	var typer *typer
	if s.typedMetrics != nil {
		typer, err = newTyper(ctx, conn.JS, s.cfg.Schema, s.cfg.Streams.Replicas, s.cfg.PublishTimeout, s.cfg.Retry, s.typedMetrics, s.host.Problems, s.host.Logger)
		if err != nil {
			return err
		}
		wg.Go(func() { typer.watch(ctx, s.cfg.Retry) })
	}
	erased := newErased(conn.JS, s.cfg.Streams.Replicas, s.host.Registry, s.host.Logger)
	wg.Go(func() { erased.run(ctx) })
	var sinks sinkStates
	if s.cfg.Policy.MinAge > 0 {
		sinks = newSinkStates(s.cfg.Shards)
		sub, err := sinks.subscribe(conn.NC)
		if err != nil {
			return fmt.Errorf("follow the sink's landings: %w", err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	owner, err := lease.OwnerFor(conn.JS, "batcher", s.instance, s.cfg.Ownership, s.cfg.Streams.Replicas, s.host.Logger)
	if err != nil {
		return err
	}
	if s.cfg.Leased() {
		s.host.Logger.Info("batching the shards this instance leases", zap.String("instance", s.instance), zap.Int("shards", s.cfg.Shards))
	} else {
		s.host.Logger.Info("batching", zap.Ints("shards", s.cfg.OwnedShards()))
	}
	sup := &shard.Supervisor{
		Owner: owner,
		Start: func(_ context.Context, k int, holds func() bool) (shard.Loop, error) {
			var d *dedup
			if dedupStream != nil {
				d = newDedup(s.cfg.Dedup, dedupStream, s.dedupMetrics, strconv.Itoa(k))
			}
			return &shardLoop{
				cfg:     &s.cfg,
				tracer:  s.host.Tracer,
				k:       k,
				js:      conn.JS,
				events:  events,
				batches: batches,
				subject: streams.EventsSubject(k),
				out:     streams.BatchesSubject(k),
				builder: batch.NewBuilder(k, s.cfg.Policy),
				erased:  erased,
				m:       s.m.forShard(k),
				log:     s.host.Logger.With(zap.Int("shard", k)),
				wd:      s.watchdogs.For(strconv.Itoa(k)),
				holds:   holds,
				typer:   typer,
				dedup:   d,
				sink:    sinks.of(k),
			}, nil
		},
		Poller: liveness.Poller{
			Every:     liveness.PollEvery(s.cfg.StallTimeout),
			Timeout:   s.cfg.PublishTimeout,
			Connected: conn.NC.IsConnected,
			Log:       s.host.Logger,
		},
		Log: s.host.Logger,
	}
	return sup.Run(ctx)
}

// stream looks a stream up, each try bounded by PublishTimeout, until it
// answers or ctx ends.
func (s *Service) stream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	var st jetstream.Stream
	err := retry.Do(ctx, s.cfg.Retry, func() error {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.PublishTimeout)
		defer cancel()
		var err error
		st, err = js.Stream(sctx, name)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		s.host.Logger.Warn("look up stream, retrying", zap.String("stream", name), zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return st, nil
}
