package batcher

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// purgeMark says EVENTS may be purged up to last from at on.
type purgeMark struct {
	last uint64
	at   time.Time
}

// schedulePurge marks EVENTS up to last for a purge after PurgeDelay and
// purges what is due.
func (l *shardLoop) schedulePurge(ctx context.Context, last uint64) {
	now := time.Now()
	l.unpurged = append(l.unpurged, purgeMark{last: last, at: now.Add(l.cfg.PurgeDelay)})
	l.purgeDue(ctx, now)
}

// purgeDue purges EVENTS up to the newest batch whose delay has passed
// at now. A failed purge is not retried: the next one covers its
// messages too.
func (l *shardLoop) purgeDue(ctx context.Context, now time.Time) {
	i := 0
	for i < len(l.unpurged) && !now.Before(l.unpurged[i].at) {
		i++
	}
	if i == 0 {
		return
	}
	l.purge(ctx, l.unpurged[i-1].last)
	l.unpurged = append(l.unpurged[:0], l.unpurged[i:]...)
}

// wakeAt is when the consume loop must act without a message: the open
// batch's age deadline, its early cut while the sink is idle, or the next
// purge, whichever is first; zero if none.
func (l *shardLoop) wakeAt() time.Time {
	d := l.builder.Deadline()
	if r := l.builder.Ripe(); !r.IsZero() && r.Before(d) && l.sinkIdle() {
		d = r
	}
	if len(l.unpurged) > 0 && (d.IsZero() || l.unpurged[0].at.Before(d)) {
		d = l.unpurged[0].at
	}
	return d
}

// purge drops the shard's EVENTS messages up to last. It runs to the end
// even when shutdown starts meanwhile, bounded by PublishTimeout. A failure
// is only logged: the purge after the next batch covers these messages too.
func (l *shardLoop) purge(ctx context.Context, last uint64) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.PublishTimeout)
	defer cancel()
	err := l.events.Purge(pctx, jetstream.WithPurgeSubject(l.subject), jetstream.WithPurgeSequence(last+1))
	if err != nil {
		l.m.purgeFailures.Inc()
		l.log.Warn("purge events", zap.Uint64("below", last+1), zap.Error(err))
	}
}
