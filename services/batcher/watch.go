package batcher

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/shard"
)

// watch checks the backlog of every owned shard every pollInterval until
// ctx ends: it keeps surge_batcher_consumer_pending current, hands the
// backlog to each shard's watchdog and stops the events consumer of a
// shard the watchdog wants repaired.
func (s *Service) watch(ctx context.Context, loops *shard.Running[*shardLoop]) {
	t := time.NewTicker(pollInterval(s.cfg.StallTimeout))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// One bound for the whole round: an unreachable server delays the
		// checks and never piles them up.
		rctx, cancel := context.WithTimeout(ctx, s.cfg.PublishTimeout)
		for _, l := range loops.All() {
			l.check(rctx)
		}
		cancel()
	}
}

// pollInterval is how often the backlog is checked: a quarter of the
// stall timeout, at most every 5 s.
func pollInterval(stall time.Duration) time.Duration {
	return min(max(stall/4, 10*time.Millisecond), 5*time.Second)
}

// check reads the shard's backlog (events to read plus the messages of a
// batch waiting for its PubAck) and reports it to the watchdog. A failed
// read skips the shard until the next round: the stall timer goes on.
func (l *shardLoop) check(ctx context.Context) {
	unread, err := l.unread(ctx)
	if err != nil {
		l.log.Debug("backlog check", zap.Error(err))
		return
	}
	l.m.pending.Set(float64(unread))
	if l.wd.Check(unread+l.inFlight.Load()) && l.wd.Repair() {
		l.repair()
	}
}

// unread is the number of the shard's EVENTS messages at or after l.next.
// EVENTS keeps batched messages until their purge, so the subject's
// message count says nothing of it: its last message does. The count is
// the NumPending of the last message read, and at least one while the
// subject's last message is unread (a lost consumer reads nothing more,
// so its count stays behind).
func (l *shardLoop) unread(ctx context.Context) (uint64, error) {
	next := l.next.Load()
	raw, err := l.events.GetLastMsgForSubject(ctx, l.subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil
	case err != nil:
		return 0, err
	case raw.Sequence < next:
		return 0, nil
	}
	return max(l.lastPending.Load(), 1), nil
}
