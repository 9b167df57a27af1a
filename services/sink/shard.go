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
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// publisher is what a shard loop needs of JetStream besides its consumer:
// publishing dead letters.
type publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// shardLoop owns one shard: it pulls that shard's batches one at a time
// and holds the shard's watermark. Only its goroutine touches its fields.
type shardLoop struct {
	k      int
	cons   jetstream.Consumer
	js     publisher
	store  store
	log    *zap.Logger
	tracer trace.Tracer
	m      shardMetrics
	retry  retry.Config
	// insertTimeout bounds one insert, watermark read or presence check.
	insertTimeout time.Duration
	// fetchWait bounds one pull.
	fetchWait time.Duration

	// watermark is the highest EVENTS sequence ClickHouse holds for the
	// shard, valid while known. It is (re)read from ClickHouse at start and
	// after any insert whose outcome is unknown.
	watermark uint64
	known     bool
}

func (s *Service) newShardLoop(k int, cons jetstream.Consumer, js publisher, st store) *shardLoop {
	return &shardLoop{
		k: k, cons: cons, js: js, store: st,
		log:           s.log.With(zap.Int("shard", k), zap.String("clickhouse", st.Addr())),
		tracer:        s.host.Tracer,
		m:             s.metrics.forShard(k),
		retry:         s.cfg.Retry,
		insertTimeout: s.cfg.ClickHouse.InsertTimeout,
		fetchWait:     s.fetchWait,
	}
}

// run pulls batches until ctx ends. A batch fetched before that is handled
// to the end. Failed pulls (NATS down) are retried with the retry policy.
func (l *shardLoop) run(ctx context.Context) {
	bo := l.retry.NewBackOff()
	for ctx.Err() == nil {
		msgs, err := l.cons.Fetch(1, jetstream.FetchMaxWait(l.fetchWait))
		if err == nil {
			for msg := range msgs.Messages() {
				l.handle(ctx, msg)
			}
			err = msgs.Error()
			if errors.Is(err, nats.ErrTimeout) {
				err = nil // an idle shard
			}
		}
		if err == nil {
			bo.Reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		wait := bo.NextBackOff()
		l.log.Warn("fetch batch", zap.Duration("wait", wait), zap.Error(err))
		retry.Sleep(ctx, wait)
	}
}

// handle lands one BATCHES message in ClickHouse, or in DEAD_LETTER, and
// acks it. Transient failures are retried until they pass or ctx ends; in
// the latter case the batch is nak'ed for whoever owns the shard next.
// Work on the batch is not cut by shutdown; only waits between retries are.
func (l *shardLoop) handle(ctx context.Context, msg jetstream.Msg) {
	// ctx carries the batch's trace from here on, and still ends at shutdown.
	ctx = telemetry.Extract(ctx, msg.Headers())
	id := msg.Headers().Get(streams.HeaderBatchID)
	l.m.batchBytes.Observe(float64(len(msg.Data())))

	b, err := batch.Decode(msg.Data())
	if err == nil && b.Shard != l.k {
		err = fmt.Errorf("%w: batch of shard %d on %s", errWrongShard, b.Shard, msg.Subject())
	}
	if err != nil {
		l.deadLetter(ctx, msg, id, err)
		return
	}
	if id == "" {
		id = b.ID()
	}
	l.m.batchRows.Observe(float64(b.Len()))

	ctx, span := l.tracer.Start(ctx, "sink insert",
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
	work := context.WithoutCancel(ctx)
	log := l.log.With(zap.String("batch_id", id))
	log = log.With(telemetry.TraceFields(ctx)...)

	attempt := 0
	var permanent error // the failure is about the batch: dead-letter it
	err = retry.Do(ctx, l.retry, func() error {
		attempt++
		if attempt > 1 {
			_ = msg.InProgress() // keep AckWait from expiring while retrying
		}
		err := l.land(work, msg, b, id, attempt)
		if err != nil && Classify(err) == Permanent {
			permanent = err
			return retry.Permanent(err)
		}
		return err
	}, func(attempt int, err error, wait time.Duration) {
		l.m.retries.Inc()
		log.Warn("insert failed, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		span.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", attempt), attribute.String("error", err.Error())))
		_ = msg.InProgress()
	})
	switch {
	case err == nil:
	case permanent != nil:
		span.RecordError(permanent)
		span.SetStatus(codes.Error, "dead letter")
		l.deadLetter(ctx, msg, id, permanent)
	default: // only shutdown ends the retries of a transient failure
		log.Info("stopping with batch not landed; releasing it", zap.Error(err))
		span.SetStatus(codes.Error, "shutdown before insert")
		_ = msg.Nak()
	}
}

// land inserts the part of b above the watermark and acks msg. An error
// leaves msg unacked.
func (l *shardLoop) land(ctx context.Context, msg jetstream.Msg, b *batch.Batch, id string, attempt int) error {
	if msg.Headers().Get(streams.HeaderReplay) != "" {
		return l.landReplay(ctx, msg, b, id, attempt)
	}
	if !l.known {
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
		l.ack(ctx, msg)
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

	l.m.insertDuration.Observe(now.Sub(start).Seconds())
	l.m.rows.Add(float64(rest.Len()))
	l.m.inserted.Inc()
	l.m.observeEndToEnd(rest.ReceivedAt, now)
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
		l.ack(ctx, msg)
		l.m.duplicates.Inc()
		span.SetAttributes(attribute.Bool("surge.duplicate", true))
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
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
	l.m.insertDuration.Observe(now.Sub(start).Seconds())
	l.m.rows.Add(float64(rest.Len()))
	l.m.inserted.Inc()
	span.SetAttributes(attribute.Int("surge.rows_inserted", rest.Len()))
	l.log.Info("replayed batch inserted", zap.String("batch_id", id), zap.Int("rows", rest.Len()), zap.String("replay", msg.Headers().Get(streams.HeaderReplay)))
	return nil
}

func (l *shardLoop) setWatermark(wm uint64) {
	l.watermark, l.known = wm, true
	l.m.watermark.Set(float64(wm))
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
// the PubAck, then terminates msg. Publishing is retried like an insert:
// the end of ctx (shutdown) cuts the waits between attempts, never an
// attempt, and releases msg with a Nak. ctx carries the batch's trace.
func (l *shardLoop) deadLetter(ctx context.Context, msg jetstream.Msg, id string, cause error) {
	work := context.WithoutCancel(ctx)
	var sourceSeq uint64
	if meta, err := msg.Metadata(); err == nil {
		sourceSeq = meta.Sequence.Stream
	}
	// The same BATCHES message always makes the same dead letter (its id
	// is sink:<subject>:<seq>), so a redelivery after a lost Term is
	// dropped by JetStream.
	out := streams.DeadLetterMsg{
		Service:   "sink",
		Subject:   streams.DeadLetterSubject("sink", l.k),
		Data:      msg.Data(),
		Reason:    cause.Error(),
		Source:    msg.Subject(),
		SourceSeq: sourceSeq,
		BatchID:   id,
	}.Msg()
	telemetry.Inject(work, out.Header)
	log := l.log.With(zap.String("batch_id", id), zap.Uint64("source_seq", sourceSeq))
	log = log.With(telemetry.TraceFields(ctx)...)

	err := retry.Do(ctx, l.retry, func() error {
		pctx, cancel := context.WithTimeout(work, 10*time.Second)
		defer cancel()
		_, err := l.js.PublishMsg(pctx, out)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		l.m.retries.Inc()
		log.Warn("publish dead letter failed, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		_ = msg.InProgress()
	})
	if err != nil { // only shutdown ends the retries
		log.Info("stopping with batch not dead-lettered; releasing it", zap.Error(err))
		_ = msg.Nak()
		return
	}
	if err := msg.Term(); err != nil {
		log.Warn("terminate dead-lettered batch", zap.Error(err))
	}
	l.m.deadLetters.Inc()
	l.m.deadLettered.Inc()
	log.Warn("batch dead-lettered", zap.String("reason", out.Header.Get(streams.HeaderReason)))
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
