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
// Files: batcher.go runs the shard loops inside the service lifecycle,
// shard.go is one shard's loop (resume, consume, cut, finish), publish.go
// sends a batch, purge.go drops EVENTS below published batches, trace.go
// gathers a batch's trace context, deadletter.go sets corrupt messages
// aside.
package batcher

import (
	"context"
	"fmt"
	"sync"

	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
)

// Service is a batcher.
type Service struct {
	cfg  Config
	host *service.Host
	m    *metrics
}

// New validates cfg and deps and opens the admin listener; it does no
// network I/O to NATS.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("batcher config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:    "batcher",
		NATS:    cfg.NATS,
		Streams: cfg.Streams,
		Admin:   cfg.Admin,
	}, deps)
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, host: host, m: newMetrics(host.Registry)}, nil
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

// body runs one loop per owned shard until ctx ends and every loop has
// finished its last batch.
func (s *Service) body(ctx context.Context, conn service.Conn) error {
	events, err := conn.JS.Stream(ctx, streams.Events)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streams.Events, err)
	}
	batches, err := conn.JS.Stream(ctx, streams.Batches)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streams.Batches, err)
	}
	owned := s.cfg.OwnedShards()
	s.host.Logger.Info("batching", zap.Ints("shards", owned))

	var wg sync.WaitGroup
	for _, k := range owned {
		l := &shardLoop{
			s:       s,
			k:       k,
			js:      conn.JS,
			events:  events,
			batches: batches,
			subject: streams.EventsSubject(k),
			out:     streams.BatchesSubject(k),
			builder: batch.NewBuilder(k, s.cfg.Policy),
			m:       s.m.forShard(k),
			log:     s.host.Logger.With(zap.Int("shard", k)),
		}
		wg.Go(func() { l.run(ctx) })
	}
	wg.Wait()
	return nil
}
