package batcher

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/liveness"
)

// Watchdog is the shard's stall watchdog.
func (l *shardLoop) Watchdog() *liveness.Watchdog { return l.wd }

// Backlog is the shard's events to read plus the messages of a batch
// waiting for its PubAck; it keeps surge_batcher_consumer_pending current.
func (l *shardLoop) Backlog(ctx context.Context) (uint64, error) {
	unread, err := l.unread(ctx)
	if err != nil {
		return 0, err
	}
	l.m.pending.Set(float64(unread))
	return unread + l.inFlight.Load(), nil
}

// Repair stops the shard's events consumer; the loop makes a new one at
// once. The batcher reads EVENTS with an ordered consumer, which the loop
// makes again whenever it stops, so a stall is its only cause.
func (l *shardLoop) Repair(context.Context, string) error {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	if l.stopConsumer != nil {
		l.stopConsumer(errStalled)
	}
	return nil
}

// Stopped forgets the loop's stall, if any, and its backlog, which is the
// next owner's to report.
func (l *shardLoop) Stopped() {
	l.wd.Check(0)
	l.m.pending.Set(0)
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
	}
	if raw.Sequence < next {
		return 0, nil
	}
	return max(l.lastPending.Load(), 1), nil
}
