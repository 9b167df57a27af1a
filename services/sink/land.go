package sink

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// land inserts the part of b above the watermark and acks msg. An error
// leaves msg unacked; shard.ErrNotOwner says the shard's lease is lost, and
// nothing was inserted or acked after that was known.
func (l *shardLoop) land(ctx context.Context, msg jetstream.Msg, b *batch.Batch, id string, attempt int) error {
	if msg.Headers().Get(streams.HeaderReplay) != "" {
		return l.landReplay(ctx, msg, b, id, attempt)
	}
	if !l.known {
		l.w.Waiting("watermark from clickhouse " + l.store.Addr())
		wctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
		wm, err := l.store.Watermark(wctx, l.k)
		cancel()
		if err != nil {
			return err
		}
		l.setWatermark(wm)
	}
	rest := b.After(l.watermark)
	if rest.Len() == 0 {
		if err := l.ack(ctx, msg); err != nil {
			return err
		}
		l.m.duplicates.Inc()
		trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("surge.duplicate", true))
		return nil
	}

	qctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
	defer cancel()
	qid := queryID(id, trace.SpanContextFromContext(ctx), attempt)
	// log_queries: servers that log no queries by default (the Debian
	// package's) still record the insert in system.query_log: one row a batch.
	qctx = clickhouse.Context(qctx, clickhouse.WithQueryID(qid), clickhouse.WithSettings(clickhouse.Settings{"log_queries": 1}))
	// The last attempt's id stays: find the insert in system.query_log by it.
	trace.SpanFromContext(ctx).SetAttributes(attribute.String(AttrQueryID, qid))
	// Fencing: a shard whose lease is lost inserts nothing more. The one
	// insert sent just before the lease ran out and landing after the next
	// owner read the watermark is caught by ClickHouse (see Service).
	if !l.holds() {
		return shard.ErrNotOwner
	}
	l.w.Waiting("insert into clickhouse " + l.store.Addr())
	start := time.Now()
	if err := l.store.Insert(qctx, rest); err != nil {
		// The block may or may not have landed: read the watermark again
		// before the next attempt.
		l.known = false
		return fmt.Errorf("insert batch %s: %w", id, err)
	}
	now := time.Now()
	l.setWatermark(b.LastSeq)
	l.m.insertDuration.Observe(now.Sub(start).Seconds())
	l.m.rows.Add(float64(rest.Len()))
	l.m.inserted.Inc()
	l.m.observeEndToEnd(rest.ReceivedAt, now)
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int("surge.rows_inserted", rest.Len()))
	l.log.Debug("batch inserted", append(telemetry.TraceFields(ctx), zap.String("batch_id", id), zap.String("query_id", qid),
		zap.Int("rows", rest.Len()), zap.Duration("took", now.Sub(start)))...)
	// The rows are in; a lease lost meanwhile leaves the batch unacked,
	// and the next owner finds it at or below the watermark.
	return l.ack(ctx, msg)
}

// landReplay inserts the rows of a replayed dead letter that ClickHouse
// does not hold yet, and acks msg. The watermark cannot tell: batches after
// the dead-lettered one have usually landed meanwhile. The sequences can:
// an EVENTS message always lands whole in one block, so a sequence present
// means all of its rows are. The check is made before every attempt, so an
// insert whose outcome is unknown is never repeated blindly, and replaying
// a dead letter twice inserts nothing the second time.
func (l *shardLoop) landReplay(ctx context.Context, msg jetstream.Msg, b *batch.Batch, id string, attempt int) error {
	l.w.Waiting("sequences from clickhouse " + l.store.Addr())
	pctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
	present, err := l.store.Present(pctx, l.k, b.FirstSeq, b.LastSeq)
	cancel()
	if err != nil {
		return err
	}
	rest := b.Without(present)
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.Bool("surge.replay", true))
	if rest.Len() == 0 {
		if err := l.ack(ctx, msg); err != nil {
			return err
		}
		l.m.duplicates.Inc()
		span.SetAttributes(attribute.Bool("surge.duplicate", true))
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
	defer cancel()
	qctx = clickhouse.Context(qctx, clickhouse.WithQueryID(queryID(id, trace.SpanContextFromContext(ctx), attempt)))
	if !l.holds() { // fencing, as in land
		return shard.ErrNotOwner
	}
	l.w.Waiting("insert into clickhouse " + l.store.Addr())
	start := time.Now()
	err = l.store.Insert(qctx, rest)
	// A replay never lowers the watermark but may raise it: read it again.
	l.known = false
	if err != nil {
		return fmt.Errorf("insert replayed batch %s: %w", id, err)
	}
	now := time.Now()
	l.m.insertDuration.Observe(now.Sub(start).Seconds())
	l.m.rows.Add(float64(rest.Len()))
	l.m.inserted.Inc()
	span.SetAttributes(attribute.Int("surge.rows_inserted", rest.Len()))
	l.log.Info("replayed batch inserted", zap.String("batch_id", id), zap.Int("rows", rest.Len()), zap.String("replay", msg.Headers().Get(streams.HeaderReplay)))
	return l.ack(ctx, msg)
}

func (l *shardLoop) setWatermark(wm uint64) {
	l.watermark, l.known = wm, true
	l.m.watermark.Set(float64(wm))
}

// ack confirms msg with the server: the shard made progress. A shard whose
// lease is lost acks nothing (shard.ErrNotOwner): the batch goes back to the next
// owner, which finds the rows landed at or below the watermark. A lost ack
// is harmless for the same reason: its failure is logged, and the loop,
// unsure, has the batch handed out again after its next empty fetch
// (redeliverLost) rather than after the ack wait.
func (l *shardLoop) ack(ctx context.Context, msg jetstream.Msg) error {
	if !l.holds() {
		return shard.ErrNotOwner
	}
	l.release()
	actx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		l.log.Warn("ack batch", zap.Error(err))
		l.unsure = true
		return nil
	}
	l.w.Progress()
	return nil
}

// AttrQueryID is the insert span's attribute holding the ClickHouse
// query_id of the insert.
const AttrQueryID = "db.clickhouse.query_id"

// queryID names an insert in system.query_log and system.processes: the
// batch id, the trace id when the span is sampled, and the attempt (a
// retried insert must not collide with one the server may still run).
func queryID(batchID string, sc trace.SpanContext, attempt int) string {
	id := "surge-sink-" + batchID
	if sc.IsSampled() {
		id += "-" + sc.TraceID().String()
	}
	return id + "-" + strconv.Itoa(attempt)
}
