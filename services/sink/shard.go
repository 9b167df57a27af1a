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
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// publisher is what a shard loop needs of JetStream besides its consumer:
// publishing dead letters.
type publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// consumers is what a shard loop needs of JetStream to (re)create its
// consumer.
type consumers interface {
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
}

// shardLoop owns one shard: it pulls that shard's batches one at a time
// and holds the shard's watermark. Only its goroutine touches its fields,
// except w, which is safe for concurrent use.
type shardLoop struct {
	k      int
	cons   jetstream.Consumer
	js     publisher
	store  store
	log    *zap.Logger
	tracer trace.Tracer
	m      shardMetrics
	retry  retry.Config
	// w is the shard's progress watchdog, checked by the pending poller.
	w *service.Watchdog
	// consumers and consumerConfig make the shard's consumer.
	consumers      consumers
	consumerConfig jetstream.ConsumerConfig
	// insertTimeout bounds one insert, watermark read or presence check.
	insertTimeout time.Duration
	// fetchWait bounds one pull.
	fetchWait time.Duration
	// keepaliveEvery is how often the batch in hand is reported in progress.
	keepaliveEvery time.Duration
	// alive keeps the batch in hand from being handed out again; nil
	// between batches.
	alive *keepalive

	// watermark is the highest EVENTS sequence ClickHouse holds for the
	// shard, valid while known. It is (re)read from ClickHouse at start and
	// after any insert whose outcome is unknown.
	watermark uint64
	known     bool
}

// js is JetStream as a shard loop uses it.
type js interface {
	publisher
	consumers
}

func (s *Service) newShardLoop(k int, js js, st store) *shardLoop {
	return &shardLoop{
		k: k, js: js, store: st,
		log:            s.log.With(zap.Int("shard", k), zap.String("clickhouse", st.Addr())),
		tracer:         s.host.Tracer,
		m:              s.metrics.forShard(k),
		retry:          s.cfg.Retry,
		w:              s.watchdogs.For(strconv.Itoa(k)),
		consumers:      js,
		consumerConfig: s.cfg.ConsumerConfig(k),
		insertTimeout:  s.cfg.ClickHouse.InsertTimeout,
		fetchWait:      s.fetchWait,
		keepaliveEvery: s.cfg.KeepaliveEvery(),
	}
}

// createConsumer creates the shard's consumer, or updates it to the
// configuration, and uses it from then on. Failures to reach JetStream are
// retried until ctx ends; an error from the server is returned.
func (l *shardLoop) createConsumer(ctx context.Context) error {
	name := l.consumerConfig.Durable
	err := retry.Do(ctx, l.retry, func() error {
		cctx, cancel := context.WithTimeout(ctx, natsTimeout)
		defer cancel()
		cons, err := l.consumers.CreateOrUpdateConsumer(cctx, streams.Batches, l.consumerConfig)
		if err != nil {
			err = fmt.Errorf("create consumer %s: %w", name, err)
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) {
				return retry.Permanent(err)
			}
			return err
		}
		l.cons = cons
		return nil
	}, func(attempt int, err error, wait time.Duration) {
		l.log.Warn("create consumer failed, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	return err
}

// run pulls batches until ctx ends. A batch fetched before that is handled
// to the end. Failed pulls (NATS down) are retried with the retry policy.
// The consumer is made again when it is gone (a NATS server that lost its
// store) or when the watchdog finds the shard stalled while it fetches.
func (l *shardLoop) run(ctx context.Context) {
	bo := l.retry.NewBackOff()
	for ctx.Err() == nil {
		if l.w.Repair() {
			l.log.Warn("shard stalled while fetching: recreating its consumer")
			l.recreateConsumer(ctx)
		}
		// An empty fetch reports nothing to the watchdog: it is exactly
		// what a stall looks like.
		l.w.Waiting("fetch from BATCHES")
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
		if consumerGone(err) {
			l.recreateConsumer(ctx)
		}
		retry.Sleep(ctx, wait)
	}
}

// consumerGone tells whether a fetch failed because the consumer is not
// on the server (anymore).
func consumerGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, nats.ErrNoResponders)
}

// recreateConsumer makes the shard's consumer again with the same
// configuration; a failure is logged and the old handle kept, for the
// next fetch error or stall to try again.
func (l *shardLoop) recreateConsumer(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	cons, err := l.consumers.CreateOrUpdateConsumer(cctx, streams.Batches, l.consumerConfig)
	if err != nil {
		if ctx.Err() == nil {
			l.log.Warn("recreate consumer", zap.String("consumer", l.consumerConfig.Durable), zap.Error(err))
		}
		return
	}
	l.cons = cons
	l.log.Info("consumer recreated", zap.String("consumer", l.consumerConfig.Durable))
}

// handle lands one BATCHES message in ClickHouse, or in DEAD_LETTER, and
// acks it. Transient failures are retried until they pass or ctx ends; in
// the latter case the batch is nak'ed for whoever owns the shard next.
// Work on the batch is not cut by shutdown; only waits between retries are.
// All along, a keepalive tells JetStream the batch is in progress.
func (l *shardLoop) handle(ctx context.Context, msg jetstream.Msg) {
	l.alive = startKeepalive(msg, l.keepaliveEvery, l.log)
	defer l.release()
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
		l.release()
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
		l.ack(ctx, msg)
		l.m.duplicates.Inc()
		span.SetAttributes(attribute.Bool("surge.duplicate", true))
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
	defer cancel()
	qctx = clickhouse.Context(qctx, clickhouse.WithQueryID(queryID(id, trace.SpanContextFromContext(ctx), attempt)))
	l.w.Waiting("insert into clickhouse " + l.store.Addr())
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

// ack confirms msg with the server: the shard made progress. A lost ack
// is harmless: the batch comes back and is found at or below the
// watermark.
func (l *shardLoop) ack(ctx context.Context, msg jetstream.Msg) {
	l.release()
	actx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		l.log.Warn("ack batch", zap.Error(err))
		return
	}
	l.w.Progress()
}

// release stops the keepalive of the batch in hand, before it is settled.
func (l *shardLoop) release() {
	l.alive.stop()
	l.alive = nil
}

// keepalive tells JetStream every period that a batch is in progress
// (InProgress restarts its AckWait), so a batch is handed out again only
// when its holder died or lost its connection, however long an insert or
// the retries take. Its goroutine ends at stop.
type keepalive struct {
	quit, done chan struct{}
}

func startKeepalive(msg jetstream.Msg, every time.Duration, log *zap.Logger) *keepalive {
	k := &keepalive{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-k.quit:
				return
			case <-t.C:
				// Sent without waiting for the server; a failure (NATS
				// down) lets the AckWait run out, and the batch comes back
				// to be found at or below the watermark.
				if err := msg.InProgress(); err != nil {
					log.Debug("keep batch in progress", zap.Error(err))
				}
			}
		}
	}()
	return k
}

// stop ends the keepalive and waits for its goroutine. A nil keepalive
// (between batches) does nothing.
func (k *keepalive) stop() {
	if k == nil {
		return
	}
	close(k.quit)
	<-k.done
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

	l.w.Waiting("dead letter publish")
	err := retry.Do(ctx, l.retry, func() error {
		pctx, cancel := context.WithTimeout(work, natsTimeout)
		defer cancel()
		_, err := l.js.PublishMsg(pctx, out)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		l.m.retries.Inc()
		log.Warn("publish dead letter failed, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	l.release()
	if err != nil { // only shutdown ends the retries
		log.Info("stopping with batch not dead-lettered; releasing it", zap.Error(err))
		_ = msg.Nak()
		return
	}
	// A lost Term brings the batch back; its dead letter then has the same
	// id and is dropped by JetStream as a duplicate.
	if err := msg.Term(); err != nil {
		log.Warn("terminate dead-lettered batch", zap.Error(err))
	} else {
		l.w.Progress()
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
