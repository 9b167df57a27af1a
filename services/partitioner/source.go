package partitioner

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

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

// pollLag reads the consumer's state every InfoInterval: it sets the lag
// metrics and gives the watchdog the backlog. It recreates the consumer
// when the server no longer has it, and when the watchdog calls for a
// repair; a failed re-creation is tried again at the next tick.
func (s *Service) pollLag(ctx context.Context, src *source) {
	t := time.NewTicker(s.cfg.InfoInterval)
	defer t.Stop()
	recreate := "" // why the consumer must be recreated
	failures := 0  // reads failed in a row
	for {
		ictx, cancel := context.WithTimeout(ctx, apiTimeout)
		info, err := src.consumer().Info(ictx)
		cancel()
		if err != nil {
			failures++
		} else {
			failures = 0
		}
		switch {
		case err == nil:
			s.m.consumerPending.Set(float64(info.NumPending))
			s.m.ackPending.Set(float64(info.NumAckPending))
			s.wd.Check(info.NumPending + uint64(info.NumAckPending))
			if s.wd.Repair() {
				recreate = "stalled"
			}
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			recreate = "gone"
			s.host.Admin().NotReady(checkConsumer, "gone, recreating")
		case !src.js.Conn().IsConnected():
			// Readiness says NATS is down (check nats); the stall clock
			// restarts once it is back.
			s.wd.Idle()
		case ctx.Err() == nil && failures&(failures-1) == 0: // the 1st, 2nd, 4th... in a row
			// Unread, the backlog escapes the watchdog: say so.
			s.logger.Warn("consumer info", zap.Int("failures", failures), zap.Error(err))
		}
		if recreate != "" && ctx.Err() == nil {
			if err := src.create(ctx); err != nil {
				s.host.Admin().NotReady(checkConsumer, recreate+", recreating: "+err.Error())
				s.logger.Warn("recreate consumer", zap.String("why", recreate), zap.Error(err))
			} else {
				s.host.Admin().Ready(checkConsumer)
				s.logger.Warn("consumer recreated", zap.String("consumer", ConsumerName), zap.String("why", recreate))
				recreate = ""
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// waitingOn is what a worker waits on, with the last failure to settle a
// request when none was acked since: the stall report then says why.
func (s *Service) waitingOn(what string) string {
	if f := s.failure.Load(); f != nil {
		return what + " (last failure: " + *f + ")"
	}
	return what
}
