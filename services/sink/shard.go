package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// publisher is what a shard loop needs of JetStream besides its consumer:
// publishing dead letters.
type publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// consumers is what a shard loop needs of JetStream to (re)create its
// consumer and have it hand out a lost delivery again.
type consumers interface {
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	ResetConsumer(ctx context.Context, stream, consumer string) (*jetstream.ConsumerResetResponse, error)
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
	// w is the shard's progress watchdog, checked by the poller.
	w *liveness.Watchdog
	// info reads the shard's backlog for the poller; repair is set by the
	// poller for the loop to make its consumer again.
	info   streamInfo
	repair atomic.Bool
	// consumers and consumerConfig make the shard's consumer.
	consumers      consumers
	consumerConfig jetstream.ConsumerConfig
	// insertTimeout bounds one insert, watermark read or presence check.
	insertTimeout time.Duration
	// fetchWait bounds one pull.
	fetchWait time.Duration
	// shutdownTimeout bounds the work on the batch in hand once the
	// shard stops while still held (shutdown, hand-over).
	shutdownTimeout time.Duration
	// silentSince is when the batch in hand first met a presence read
	// that a silent replica left unknown; zero otherwise.
	silentSince time.Time
	// alive keeps the batch in hand from being handed out again.
	alive liveness.Keepalive
	// holds reports whether this instance still owns the shard: always in
	// static mode, while its lease holds in lease mode. Checked before
	// every insert attempt, dead-letter publish and ack.
	holds func() bool
	// notify tells the batcher, on streams.LandedSubject, that the shard's
	// batches up to an EVENTS sequence have landed; nil tells nobody.
	notify func(seq uint64)

	// watermark is the highest EVENTS sequence ClickHouse holds for the
	// shard, valid while known. It is (re)read from ClickHouse at start and
	// after any insert whose outcome is unknown.
	watermark uint64
	known     bool
	// unsure is set when a delivery or an ack of the consumer may have
	// been lost: at the start of a tenure (the last owner's batch in
	// hand), after a failed fetch or a failed ack (a NATS node or a
	// consumer leader gone). See redeliverLost.
	unsure bool
	// ackPending is set by the poller when the shard's consumer counts a
	// batch delivered and not acked: after the loop's next empty fetch,
	// when it holds no batch, that one was lost on its way (a delivery
	// lost in a leader's handover raises no error here) and is handed
	// out again (redeliverLost) rather than after the ack wait.
	ackPending atomic.Bool
}

// js is JetStream as a shard loop uses it.
type js interface {
	publisher
	consumers
}

func (s *Service) newShardLoop(k int, js js, st store) *shardLoop {
	return &shardLoop{
		k: k, js: js, store: st,
		log:             s.log.With(zap.Int("shard", k), zap.String("clickhouse", st.Addr())),
		tracer:          s.host.Tracer,
		m:               s.metrics.forShard(k),
		retry:           s.cfg.Retry,
		w:               s.watchdogs.For(strconv.Itoa(k)),
		consumers:       js,
		consumerConfig:  s.cfg.ConsumerConfig(k),
		insertTimeout:   s.cfg.ClickHouse.InsertTimeout,
		fetchWait:       s.fetchWait,
		shutdownTimeout: s.cfg.ShutdownTimeout,
		alive:           liveness.Keepalive{Every: s.cfg.KeepaliveEvery()},
		holds:           func() bool { return true },
	}
}

// fenced is the context of the work on one batch: unlike ctx it does not
// end at once at shutdown or hand-over (a batch in hand is finished, under
// a lease still renewed) but shutdownTimeout later, so a graceful stop
// hands the shard over no later than a crash would; it ends at once when
// ctx ends because the lease is lost or ran out. Either way an insert
// under way is cut, and the next owner asks ClickHouse what landed. Call
// stop when the batch is settled.
func (l *shardLoop) fenced(ctx context.Context) (work context.Context, stop func()) {
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	unwatch := context.AfterFunc(ctx, func() {
		if !l.holds() {
			cancel()
			return
		}
		// Cancelling twice is harmless: the timer is left to run out
		// when the batch settles first.
		time.AfterFunc(l.shutdownTimeout, cancel)
	})
	return work, func() {
		unwatch()
		cancel()
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

// Run pulls batches until ctx ends. A batch fetched before that is handled
// to the end. Failed pulls (NATS down) are retried with the retry policy.
// The consumer is made again when it is gone (a NATS server that lost its
// store) or when the watchdog finds the shard stalled while it fetches.
func (l *shardLoop) Run(ctx context.Context) {
	bo := l.retry.NewBackOff()
	l.unsure = true
	for ctx.Err() == nil {
		if l.repair.Swap(false) {
			l.log.Warn("shard stalled while fetching: recreating its consumer")
			l.recreateConsumer(ctx)
		}
		// An empty fetch reports nothing to the watchdog: it is exactly
		// what a stall looks like.
		l.w.Waiting("fetch from BATCHES")
		msgs, err := l.cons.Fetch(1, jetstream.FetchMaxWait(l.fetchWait))
		got := false
		if err == nil {
			for msg := range msgs.Messages() {
				got = true
				l.handle(ctx, msg)
			}
			err = msgs.Error()
			if errors.Is(err, nats.ErrTimeout) {
				err = nil // an idle shard
			}
		}
		if err == nil {
			bo.Reset()
			if !got && (l.ackPending.Swap(false) || l.unsure) {
				l.redeliverLost(ctx)
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		l.unsure = true
		wait := bo.NextBackOff()
		l.log.Warn("fetch batch", zap.Duration("wait", wait), zap.Error(err))
		if l.consumerGone(ctx, err) {
			l.recreateConsumer(ctx)
		}
		retry.Sleep(ctx, wait)
	}
}

// redeliverLost has the consumer hand out at once a batch it counts as
// delivered but whose delivery or ack never completed here: one lost with
// a NATS node or a consumer leader, or the batch the last owner had in
// hand. Left alone, the consumer hands it out again only after its ack
// wait, and with one batch in flight per shard the shard waits that long.
// It is called after an empty fetch: the loop holds no batch, so a batch
// still pending ack is such a lost one, and the consumer is reset to its
// ack floor (the watermark keeps the batch from landing twice). A failed
// look leaves the loop unsure, for the next empty fetch to ask again; a
// failed reset (a server without the reset API, older than 2.14) is
// logged, and the batch comes after the ack wait as it always did.
func (l *shardLoop) redeliverLost(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	info, err := l.cons.Info(cctx)
	if err != nil {
		return
	}
	l.unsure = false
	if info.NumAckPending == 0 {
		return
	}
	if _, err := l.consumers.ResetConsumer(cctx, streams.Batches, l.consumerConfig.Durable); err != nil {
		if ctx.Err() == nil {
			l.log.Warn("reset consumer to hand out a lost batch again; it comes after the ack wait", zap.Error(err))
		}
		return
	}
	l.m.resets.Inc()
	l.log.Info("a batch delivered but not received or not acked here is handed out again: consumer reset",
		zap.Int("ack_pending", info.NumAckPending), zap.Uint64("ack_floor", info.AckFloor.Stream))
}

// consumerGone tells whether a fetch failed because the consumer is not
// on the server (anymore). No responders means that, or that the
// consumer has no leader for a moment (an election in a cluster), when
// making it again would only wait out natsTimeout: the consumer is asked,
// for at most a fetch's wait, and made again only if the server says it
// does not exist.
func (l *shardLoop) consumerGone(ctx context.Context, err error) bool {
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
		return true
	}
	if !errors.Is(err, nats.ErrNoResponders) {
		return false
	}
	ictx, cancel := context.WithTimeout(ctx, l.fetchWait)
	defer cancel()
	_, err = l.cons.Info(ictx)
	return errors.Is(err, jetstream.ErrConsumerNotFound)
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
// A lost lease stops the work at once, an insert under way included, and
// naks the batch. All along, a keepalive tells JetStream the batch is in
// progress.
func (l *shardLoop) handle(ctx context.Context, msg jetstream.Msg) {
	l.alive.Hold(msg)
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
	rows := b.Len()
	l.m.batchRows.Observe(float64(rows))
	h := newInHand(msg.Data(), b)

	ctx, span := l.tracer.Start(ctx, "sink insert",
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("db.system", "clickhouse"),
			attribute.String("db.operation", "INSERT"),
			semconv.ServerAddress(l.store.Addr()),
			attribute.Int("surge.shard", l.k),
			attribute.Int("surge.rows", rows),
			attribute.Int("surge.bytes", len(msg.Data())),
			attribute.String("surge.batch_id", id),
		))
	defer span.End()
	work, stop := l.fenced(ctx)
	defer stop()
	log := l.log.With(zap.String("batch_id", id))
	log = log.With(telemetry.TraceFields(ctx)...)

	attempt := 0
	l.silentSince = time.Time{}
	var permanent error // the failure is about the batch: dead-letter it
	err = retry.Do(ctx, l.retry, func() error {
		attempt++
		err := l.land(work, msg, h, id, attempt)
		if err != nil && !l.holds() {
			// Lost before or while the attempt ran (an insert under way
			// is cut): whatever the error, nothing more is sent.
			return retry.Permanent(shard.ErrNotOwner)
		}
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
		if l.notify != nil {
			l.notify(h.lastSeq)
		}
	case errors.Is(err, shard.ErrNotOwner):
		log.Warn("shard lease lost with the batch unacked; releasing it to the next owner")
		span.SetStatus(codes.Error, "shard lease lost")
		l.release()
		_ = msg.Nak()
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

// release stops the keepalive of the batch in hand, before it is settled.
func (l *shardLoop) release() {
	l.alive.Stop()
}
