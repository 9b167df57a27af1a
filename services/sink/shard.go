package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// maxReasonLen bounds the Surge-Reason header of a dead letter.
const maxReasonLen = 1024

// shardLoop owns one shard: it pulls that shard's batches one at a time
// and holds the shard's watermark. Only its goroutine touches its fields.
type shardLoop struct {
	s     *Service
	k     int
	label string
	cons  jetstream.Consumer
	js    jetstream.JetStream
	store store
	log   *zap.Logger

	// watermark is the highest EVENTS sequence ClickHouse holds for the
	// shard, valid while known. It is (re)read from ClickHouse at start and
	// after any insert whose outcome is unknown.
	watermark uint64
	known     bool
}

func newShardLoop(s *Service, k int, cons jetstream.Consumer, js jetstream.JetStream, st store) *shardLoop {
	return &shardLoop{
		s: s, k: k, label: strconv.Itoa(k), cons: cons, js: js, store: st,
		log: s.log.With(zap.Int("shard", k), zap.String("clickhouse", st.Addr())),
	}
}

// run pulls batches until ctx ends. A batch fetched before that is handled
// to the end.
func (l *shardLoop) run(ctx context.Context) {
	for ctx.Err() == nil {
		msgs, err := l.cons.Fetch(1, jetstream.FetchMaxWait(l.s.fetchWait))
		if err != nil {
			l.log.Warn("fetch batch", zap.Error(err))
			sleep(ctx, l.s.fetchWait)
			continue
		}
		for msg := range msgs.Messages() {
			l.handle(ctx, msg)
		}
		if err := msgs.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
			l.log.Warn("fetch batch", zap.Error(err))
			sleep(ctx, l.s.fetchWait)
		}
	}
}

// handle lands one BATCHES message in ClickHouse, or in DEAD_LETTER, and
// acks it. Transient failures are retried until they pass or ctx ends; in
// the latter case the batch is nak'ed for whoever owns the shard next.
func (l *shardLoop) handle(ctx context.Context, msg jetstream.Msg) {
	m := l.s.metrics
	// Work on the batch is not cut by shutdown; only waits between retries are.
	work := context.WithoutCancel(ctx)
	work = telemetry.Extract(work, msg.Headers())
	id := msg.Headers().Get(streams.HeaderBatchID)
	m.batchBytes.WithLabelValues(l.label).Observe(float64(len(msg.Data())))

	b, err := batch.Decode(msg.Data())
	if err == nil && b.Shard != l.k {
		err = fmt.Errorf("%w: batch of shard %d on %s", errWrongShard, b.Shard, msg.Subject())
	}
	if err != nil {
		l.deadLetter(ctx, work, msg, id, err)
		return
	}
	if id == "" {
		id = b.ID()
	}
	m.batchRows.WithLabelValues(l.label).Observe(float64(b.Len()))

	work, span := l.s.tracer.Start(work, "sink insert",
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("db.system", "clickhouse"),
			attribute.String("db.operation", "INSERT"),
			attribute.String("server.address", l.store.Addr()),
			attribute.Int("surge.shard", l.k),
			attribute.Int("surge.rows", b.Len()),
			attribute.Int("surge.bytes", len(msg.Data())),
			attribute.String("surge.batch_id", id),
		))
	defer span.End()
	log := l.log.With(zap.String("batch_id", id))
	log = log.With(telemetry.TraceFields(work)...)

	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			_ = msg.InProgress() // keep AckWait from expiring while retrying
		}
		err := l.land(work, msg, b, id, attempt)
		if err == nil {
			return
		}
		if Classify(err) == Permanent {
			span.RecordError(err)
			span.SetStatus(codes.Error, "dead letter")
			l.deadLetter(ctx, work, msg, id, err)
			return
		}
		m.retries.WithLabelValues(l.label).Inc()
		wait := backoff(l.s.cfg.Retry, attempt)
		log.Warn("insert failed, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		span.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", attempt), attribute.String("error", err.Error())))
		_ = msg.InProgress()
		if !sleep(ctx, wait) {
			log.Info("stopping with batch not landed; releasing it", zap.Error(err))
			span.SetStatus(codes.Error, "shutdown before insert")
			_ = msg.Nak()
			return
		}
	}
}

// land inserts the part of b above the watermark and acks msg. An error
// leaves msg unacked.
func (l *shardLoop) land(ctx context.Context, msg jetstream.Msg, b *batch.Batch, id string, attempt int) error {
	m := l.s.metrics
	timeout := l.s.cfg.ClickHouse.InsertTimeout
	if msg.Headers().Get(streams.HeaderReplay) != "" {
		return l.landReplay(ctx, msg, b, id, attempt)
	}
	if !l.known {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		wm, err := l.store.Watermark(wctx, l.k)
		cancel()
		if err != nil {
			return err
		}
		l.setWatermark(wm)
	}
	rest := b.After(l.watermark)
	if rest.Len() == 0 {
		l.ack(ctx, msg)
		m.batches.WithLabelValues(l.label, outcomeDuplicate).Inc()
		trace.SpanFromContext(ctx).SetAttributes(attribute.Bool("surge.duplicate", true))
		return nil
	}

	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	qid := queryID(id, trace.SpanContextFromContext(ctx), attempt)
	// log_queries: servers that log no queries by default (the Debian
	// package's) still record the insert in system.query_log: one row a batch.
	qctx = clickhouse.Context(qctx, clickhouse.WithQueryID(qid), clickhouse.WithSettings(clickhouse.Settings{"log_queries": 1}))
	// The last attempt's id stays: find the insert in system.query_log by it.
	trace.SpanFromContext(ctx).SetAttributes(attribute.String(AttrQueryID, qid))
	start := time.Now()
	if err := l.store.Insert(qctx, rest); err != nil {
		// The block may or may not have landed: read the watermark again
		// before the next attempt.
		l.known = false
		return fmt.Errorf("insert batch %s: %w", id, err)
	}
	now := time.Now()
	l.setWatermark(b.LastSeq)
	l.ack(ctx, msg)

	m.insertDuration.WithLabelValues(l.label).Observe(now.Sub(start).Seconds())
	m.rows.WithLabelValues(l.label).Add(float64(rest.Len()))
	m.batches.WithLabelValues(l.label, outcomeInserted).Inc()
	m.observeEndToEnd(rest.ReceivedAt, now)
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int("surge.rows_inserted", rest.Len()))
	l.log.Debug("batch inserted", append(telemetry.TraceFields(ctx), zap.String("batch_id", id), zap.String("query_id", qid),
		zap.Int("rows", rest.Len()), zap.Duration("took", now.Sub(start)))...)
	return nil
}

// landReplay inserts the rows of a replayed dead letter that ClickHouse
// does not hold yet, and acks msg. The watermark cannot tell: batches after
// the dead-lettered one have usually landed meanwhile. The sequences can:
// an EVENTS message always lands whole in one block, so a sequence present
// means all of its rows are. The check is made before every attempt, so an
// insert whose outcome is unknown is never repeated blindly, and replaying
// a dead letter twice inserts nothing the second time.
func (l *shardLoop) landReplay(ctx context.Context, msg jetstream.Msg, b *batch.Batch, id string, attempt int) error {
	m := l.s.metrics
	timeout := l.s.cfg.ClickHouse.InsertTimeout
	pctx, cancel := context.WithTimeout(ctx, timeout)
	present, err := l.store.Present(pctx, l.k, b.FirstSeq, b.LastSeq)
	cancel()
	if err != nil {
		return err
	}
	rest := b.Without(present)
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(attribute.Bool("surge.replay", true))
	if rest.Len() == 0 {
		l.ack(ctx, msg)
		m.batches.WithLabelValues(l.label, outcomeDuplicate).Inc()
		span.SetAttributes(attribute.Bool("surge.duplicate", true))
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	qctx = clickhouse.Context(qctx, clickhouse.WithQueryID(queryID(id, trace.SpanContextFromContext(ctx), attempt)))
	start := time.Now()
	err = l.store.Insert(qctx, rest)
	// A replay never lowers the watermark but may raise it: read it again.
	l.known = false
	if err != nil {
		return fmt.Errorf("insert replayed batch %s: %w", id, err)
	}
	now := time.Now()
	l.ack(ctx, msg)
	m.insertDuration.WithLabelValues(l.label).Observe(now.Sub(start).Seconds())
	m.rows.WithLabelValues(l.label).Add(float64(rest.Len()))
	m.batches.WithLabelValues(l.label, outcomeInserted).Inc()
	span.SetAttributes(attribute.Int("surge.rows_inserted", rest.Len()))
	l.log.Info("replayed batch inserted", zap.String("batch_id", id), zap.Int("rows", rest.Len()), zap.String("replay", msg.Headers().Get(streams.HeaderReplay)))
	return nil
}

func (l *shardLoop) setWatermark(wm uint64) {
	l.watermark, l.known = wm, true
	l.s.metrics.watermark.WithLabelValues(l.label).Set(float64(wm))
}

// ack confirms msg with the server. A lost ack is harmless: the batch
// comes back and is found at or below the watermark.
func (l *shardLoop) ack(ctx context.Context, msg jetstream.Msg) {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		l.log.Warn("ack batch", zap.Error(err))
	}
}

// deadLetter publishes the original bytes of msg to DEAD_LETTER, waits for
// the PubAck, then terminates msg. Publishing is retried like an insert.
func (l *shardLoop) deadLetter(ctx, work context.Context, msg jetstream.Msg, id string, cause error) {
	m := l.s.metrics
	reason := cause.Error()
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	var sourceSeq uint64
	if meta, err := msg.Metadata(); err == nil {
		sourceSeq = meta.Sequence.Stream
	}
	out := nats.NewMsg(streams.DeadLetterSubject("sink", l.k))
	out.Data = msg.Data()
	out.Header.Set(streams.HeaderReason, reason)
	out.Header.Set(streams.HeaderSource, msg.Subject())
	out.Header.Set(streams.HeaderSourceSeq, strconv.FormatUint(sourceSeq, 10))
	if id != "" {
		out.Header.Set(streams.HeaderBatchID, id)
	}
	telemetry.Inject(work, out.Header)
	// The same BATCHES message always makes the same dead letter, so a
	// redelivery after a lost Term is dropped by JetStream.
	msgID := "sink:" + msg.Subject() + ":" + strconv.FormatUint(sourceSeq, 10)
	log := l.log.With(zap.String("batch_id", id), zap.Uint64("source_seq", sourceSeq))
	log = log.With(telemetry.TraceFields(work)...)

	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(work, 10*time.Second)
		_, err := l.js.PublishMsg(pctx, out, jetstream.WithMsgID(msgID))
		cancel()
		if err == nil {
			break
		}
		m.retries.WithLabelValues(l.label).Inc()
		wait := backoff(l.s.cfg.Retry, attempt)
		log.Warn("publish dead letter failed, retrying", zap.Int("attempt", attempt), zap.Error(err))
		_ = msg.InProgress()
		if !sleep(ctx, wait) {
			_ = msg.Nak()
			return
		}
	}
	if err := msg.Term(); err != nil {
		log.Warn("terminate dead-lettered batch", zap.Error(err))
	}
	m.deadLetters.WithLabelValues(l.label).Inc()
	m.batches.WithLabelValues(l.label, outcomeDeadLetter).Inc()
	log.Warn("batch dead-lettered", zap.String("reason", reason))
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
