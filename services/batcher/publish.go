package batcher

import (
	"context"
	"fmt"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// publish sends a batch, retrying until its PubAck or the end of ctx, then
// purges EVENTS below it.
func (l *shardLoop) publish(ctx context.Context, c *cutBatch) error {
	b := c.b
	id := b.ID()
	data := batch.Encode(b)
	spanCtx, span := l.tracer.Start(c.trace.context(), "batch",
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(c.trace.links...),
		trace.WithAttributes(
			semconv.MessagingSystemKey.String("nats"),
			semconv.MessagingDestinationName(l.out),
			attribute.Int("surge.shard", l.k),
			attribute.String("surge.batch.id", id),
			attribute.Int("surge.batch.rows", b.Len()),
			attribute.Int("surge.batch.bytes", len(data)),
			attribute.String("surge.batch.cut", string(c.reason)),
			attribute.Int("surge.batch.links_dropped", c.trace.dropped),
		))
	defer span.End()
	log := l.log.With(zap.String("batch_id", id))
	log = log.With(telemetry.TraceFields(spanCtx)...)

	msg := streams.BatchMsg{Batch: b, Data: data}.Msg(spanCtx)
	start := time.Now()
	l.inFlight.Store(messages(b))
	defer l.inFlight.Store(0)
	l.wd.Waiting("PubAck of batch " + id)
	if err := l.publishRetry(ctx, msg, log); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "publish")
		return err
	}
	l.wd.Progress()
	l.m.publishDuration.Observe(time.Since(start).Seconds())
	l.m.batchRows.Observe(float64(b.Len()))
	l.m.batchBytes.Observe(float64(len(data)))
	l.m.batches.Inc()
	l.m.rows.Add(float64(b.Len()))
	l.m.cuts[c.reason].Inc()
	log.Debug("batch published", zap.Int("rows", b.Len()), zap.Int("bytes", len(data)), zap.String("cut", string(c.reason)))
	if l.sink != nil {
		l.sink.publishedThrough(b.LastSeq)
	}
	l.dedupPublished(ctx, c)
	l.schedulePurge(ctx, b.LastSeq)
	return nil
}

// messages counts the EVENTS messages of b: its rows come in runs of one
// sequence per message.
func messages(b *batch.Batch) uint64 {
	var n uint64
	for i, seq := range b.Seq {
		if i == 0 || seq != b.Seq[i-1] {
			n++
		}
	}
	return n
}

// publishRetry publishes msg synchronously until a PubAck or the end of
// ctx, each attempt bounded by PublishTimeout and paced by Retry. The
// message id makes a retry of a publish that did land a duplicate. Each
// attempt first checks that the shard is still this instance's, and stops
// with shard.ErrNotOwner when it is not.
func (l *shardLoop) publishRetry(ctx context.Context, msg *nats.Msg, log *zap.Logger) error {
	err := retry.Do(ctx, l.cfg.Retry, func() error {
		if !l.holds() {
			return retry.Permanent(shard.ErrNotOwner)
		}
		pctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
		defer cancel()
		_, err := l.js.PublishMsg(pctx, msg)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		l.m.retries.Inc()
		log.Warn("publish failed, retrying", zap.String("subject", msg.Subject),
			zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w", msg.Subject, err)
	}
	return nil
}
