package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/streams"
)

// streamInfo is what the poller reads of JetStream for a shard's backlog.
type streamInfo interface {
	Consumer(ctx context.Context, stream, consumer string) (jetstream.Consumer, error)
	Stream(ctx context.Context, stream string) (jetstream.Stream, error)
}

// Watchdog is the shard's stall watchdog.
func (l *shardLoop) Watchdog() *liveness.Watchdog { return l.w }

// Backlog is the number of batches of the shard waiting or unacked, and
// keeps surge_sink_consumer_pending and _ack_pending current. While the
// shard's consumer is missing (a NATS server that lost its store), it is
// the number of the shard's batches in BATCHES, a work queue; the fetch
// loop makes the consumer again when its fetch fails on that.
func (l *shardLoop) Backlog(ctx context.Context) (uint64, error) {
	name := l.consumerConfig.Durable
	cons, err := l.info.Consumer(ctx, streams.Batches, name)
	if err == nil {
		info := cons.CachedInfo()
		l.m.pending.Set(float64(info.NumPending))
		l.m.ackPending.Set(float64(info.NumAckPending))
		if info.NumAckPending > 0 {
			l.ackPending.Store(true)
		}
		return info.NumPending + uint64(info.NumAckPending), nil
	}
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, fmt.Errorf("consumer %s: %w", name, err)
	}
	stream, err := l.info.Stream(ctx, streams.Batches)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", streams.Batches, err)
	}
	subject := streams.BatchesSubject(l.k)
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", streams.Batches, err)
	}
	n := info.State.Subjects[subject]
	l.m.pending.Set(float64(n))
	l.m.ackPending.Set(0)
	return n, nil
}

// Repair has the fetch loop make the shard's consumer again before its
// next fetch: a consumer whose server-side state was lost hands out
// nothing, and the loop alone touches the consumer.
func (l *shardLoop) Repair(context.Context, string) error {
	l.repair.Store(true)
	return nil
}

// Stopped forgets the shard's stall, if any, and its backlog, which is
// the next owner's to report.
func (l *shardLoop) Stopped() {
	l.w.Check(0)
	l.m.pending.Set(0)
	l.m.ackPending.Set(0)
}
