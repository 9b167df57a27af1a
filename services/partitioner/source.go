package partitioner

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/streams"
)

// checkConsumer is the readiness check of the shared consumer: not ready
// until it is created, nor while it is gone and not yet recreated.
const checkConsumer = "consumer"

// apiTimeout bounds one JetStream API request of the partitioner: the
// consumer's info or its creation.
const apiTimeout = 5 * time.Second

// consumerConfig is the shared INGEST consumer.
func (c Config) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "Surge partitioners, shared",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: c.MaxAckPending,
	}
}

// source is the shared INGEST consumer. The lag poller recreates it when
// it is gone (a NATS restart with an empty store) or stalled; the workers
// take the current handle at each fetch.
type source struct {
	js   jetstream.JetStream
	cfg  jetstream.ConsumerConfig
	cons atomic.Pointer[jetstream.Consumer]
}

// create creates the consumer, or updates it to cfg, and hands the new
// handle to the workers.
func (src *source) create(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	c, err := src.js.CreateOrUpdateConsumer(ctx, streams.Ingest, src.cfg)
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", ConsumerName, err)
	}
	src.cons.Store(&c)
	return nil
}

// consumer is the current handle.
func (src *source) consumer() jetstream.Consumer { return *src.cons.Load() }

// inputUnit is the shared consumer as the liveness poller watches it, every
// InfoInterval: its lag sets the metrics and feeds the watchdog, and it
// is made again when the server no longer has it or the watchdog finds
// it stalled; a failed re-creation is tried again at the next round.
type inputUnit struct {
	s   *Service
	src *source
}

// Watchdog is the input's stall watchdog.
func (in inputUnit) Watchdog() *liveness.Watchdog { return in.s.wd }

// Backlog is the requests waiting in INGEST or unacked.
func (in inputUnit) Backlog(ctx context.Context) (uint64, error) {
	info, err := in.src.consumer().Info(ctx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		in.s.host.Admin().NotReady(checkConsumer, "gone, recreating")
		return 0, fmt.Errorf("consumer %s: %w", ConsumerName, liveness.ErrGone)
	}
	if err != nil {
		return 0, fmt.Errorf("consumer %s: %w", ConsumerName, err)
	}
	in.s.m.consumerPending.Set(float64(info.NumPending))
	in.s.m.ackPending.Set(float64(info.NumAckPending))
	return info.NumPending + uint64(info.NumAckPending), nil
}

// Repair makes the consumer again and hands the new handle to the workers.
func (in inputUnit) Repair(ctx context.Context, why string) error {
	if err := in.src.create(ctx); err != nil {
		in.s.host.Admin().NotReady(checkConsumer, why+", recreating: "+err.Error())
		return err
	}
	in.s.host.Admin().Ready(checkConsumer)
	in.s.logger.Warn("consumer recreated", zap.String("consumer", ConsumerName), zap.String("why", why))
	return nil
}

// waitingOn is what a worker waits on, with the last failure to settle a
// request when none was acked since: the stall report then says why.
func (s *Service) waitingOn(what string) string {
	if f := s.failure.Load(); f != nil {
		return what + " (last failure: " + *f + ")"
	}
	return what
}
