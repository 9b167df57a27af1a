// Package batcher cuts each owned shard of EVENTS into batches of whole
// messages, encodes them by column and publishes them to BATCHES.
//
// A batch is a contiguous run of one shard's EVENTS sequences, named
// <shard>:<first>-<last>. Each shard loop starts after the last batch of
// its shard in BATCHES, reads EVENTS with an ordered consumer, and purges
// EVENTS below every batch it has published once PurgeDelay has passed, so
// no state lives outside the streams and a restart never re-cuts published
// events differently while their batch is still in BATCHES.
//
// The purge waits because JetStream rebuilds its duplicate map after a
// restart from the messages still stored: a partitioner that republishes
// a group after a NATS restart (its INGEST ack was lost) is recognised only
// while the first copy is in EVENTS. The price: a batcher that restarts
// after the sink has consumed every batch of a shard re-reads up to
// PurgeDelay of events, whose rows the sink drops below its watermark.
package batcher

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// drainTimeout bounds the wait for the NATS connection to flush at shutdown.
const drainTimeout = 10 * time.Second

// Service is a running batcher.
type Service struct {
	cfg    Config
	logger *zap.Logger
	tracer trace.Tracer
	admin  *service.Admin
	m      *metrics
}

// New builds a batcher and opens its admin listener; it does no network
// I/O to NATS.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("batcher config: %w", err)
	}
	admin, err := service.NewAdmin(cfg.Admin.Addr, deps.Registry, deps.Logger)
	if err != nil {
		return nil, err
	}
	return &Service{
		cfg:    cfg,
		logger: deps.Logger,
		tracer: deps.TracerProvider.Tracer("github.com/surge-events/surge/services/batcher"),
		admin:  admin,
		m:      newMetrics(deps.Registry),
	}, nil
}

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.admin.Addr() }

// Run batches every owned shard until ctx ends; each shard then publishes
// its partial batch and purges EVENTS below it before Run drains the
// connection and returns.
func (s *Service) Run(ctx context.Context) (err error) {
	stopAdmin := s.admin.Start()
	defer func() {
		if aerr := stopAdmin(); aerr != nil && err == nil {
			err = aerr
		}
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			err = nil // stopped while starting: a clean shutdown too
		}
	}()

	nc, js, err := service.ConnectNATS(ctx, s.cfg.NATS, "surge-batcher", s.logger)
	if err != nil {
		return err
	}
	defer func() {
		if derr := service.DrainNATS(nc, drainTimeout); derr != nil {
			s.logger.Warn("nats drain", zap.Error(derr))
		}
	}()

	if err := streams.Ensure(ctx, js, s.cfg.Streams); err != nil {
		return err
	}
	eventsStream, err := js.Stream(ctx, streams.Events)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streams.Events, err)
	}
	batchesStream, err := js.Stream(ctx, streams.Batches)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streams.Batches, err)
	}

	s.admin.SetReady(true)
	defer s.admin.SetReady(false)
	owned := s.cfg.OwnedShards()
	s.logger.Info("batching", zap.Ints("shards", owned))

	var wg sync.WaitGroup
	for _, k := range owned {
		l := &shardLoop{
			s:       s,
			k:       k,
			js:      js,
			events:  eventsStream,
			batches: batchesStream,
			subject: streams.EventsSubject(k),
			out:     streams.BatchesSubject(k),
			builder: batch.NewBuilder(k, s.cfg.Policy),
			m:       s.m.forShard(k),
			log:     s.logger.With(zap.Int("shard", k)),
		}
		wg.Go(func() { l.run(ctx) })
	}
	wg.Wait()
	return nil
}

// shardLoop batches one shard. It is owned by one goroutine.
type shardLoop struct {
	s       *Service
	k       int
	js      jetstream.JetStream
	events  jetstream.Stream
	batches jetstream.Stream
	subject string // events.shard.<k>
	out     string // batches.shard.<k>
	builder *batch.Builder
	trace   batchTrace // trace context of the open batch
	m       shardMetrics
	log     *zap.Logger

	// next is the EVENTS sequence to read from; 0 means the subject's first.
	next uint64
	// held is a cut batch whose publish was interrupted by shutdown.
	held *cutBatch
	// unpurged are the published batches whose EVENTS messages wait for
	// PurgeDelay, oldest first.
	unpurged []purgeMark
}

// purgeMark says EVENTS may be purged up to last from at on.
type purgeMark struct {
	last uint64
	at   time.Time
}

type cutBatch struct {
	b      *batch.Batch
	trace  batchTrace
	reason string
}

// batchTrace gathers, while a batch fills, the trace context of its span.
//
// A batch has many parents: its span links to the publish spans of the
// sampled messages it holds (at most MaxLinks). Its parent is the first
// sampled message's span, so with a parent-based sampler a batch is
// recorded exactly when it holds a sampled message and appears in that
// message's trace; a batch of only unsampled messages takes the first
// one's (unsampled) context, records nothing, and carries the unsampled
// flag on to the sink, which records nothing either. A batch of messages
// without any trace context is a new trace, left to the sampler.
type batchTrace struct {
	parent  trace.SpanContext
	links   []trace.Link
	dropped int // sampled messages past MaxLinks
}

// add notes the span context a message carries.
func (t *batchTrace) add(sc trace.SpanContext, maxLinks int) {
	if !sc.IsValid() {
		return
	}
	if !t.parent.IsSampled() && (!t.parent.IsValid() || sc.IsSampled()) {
		t.parent = sc
	}
	if !sc.IsSampled() {
		return
	}
	if len(t.links) < maxLinks {
		t.links = append(t.links, trace.Link{SpanContext: sc})
	} else {
		t.dropped++
	}
}

// context is the parent context of the batch span.
func (t *batchTrace) context() context.Context {
	if !t.parent.IsValid() {
		return context.Background()
	}
	return trace.ContextWithRemoteSpanContext(context.Background(), t.parent)
}

func (l *shardLoop) run(ctx context.Context) {
	next, ok := l.resume(ctx)
	if !ok {
		return
	}
	l.next = next
	defer l.finish(ctx)
	for failures := 1; ; failures++ {
		err := l.consume(ctx)
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("events consumer stopped, recreating", zap.Uint64("from", l.next), zap.Error(err))
		sleep(ctx, backoff(failures))
		if ctx.Err() != nil {
			return
		}
	}
}

// resume finds where the shard's last published batch ends. Without one
// (none yet, or the sink consumed them all) it starts at the subject's
// first message: EVENTS is purged below every published batch, and the
// sink drops rows at or below its watermark.
func (l *shardLoop) resume(ctx context.Context) (uint64, bool) {
	for attempt := 1; ; attempt++ {
		raw, err := l.batches.GetLastMsgForSubject(ctx, l.out)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			l.log.Info("no batch yet, starting at the first event message")
			return 0, true
		}
		if err == nil && raw.Header.Get(streams.HeaderReplay) != "" {
			// A replayed dead letter says nothing of where batching stopped.
			l.log.Info("last batch is a replay, starting at the first event message")
			return 0, true
		}
		if err == nil {
			last, perr := strconv.ParseUint(raw.Header.Get(streams.HeaderLastSeq), 10, 64)
			if perr != nil {
				l.log.Error("last batch has no valid "+streams.HeaderLastSeq+", starting at the first event message",
					zap.Uint64("batch_seq", raw.Sequence), zap.Error(perr))
				return 0, true
			}
			l.log.Info("resuming after last batch", zap.String("batch", raw.Header.Get(streams.HeaderBatchID)))
			// A purge that was due before a crash is done in its time.
			l.schedulePurge(ctx, last)
			return last + 1, true
		}
		if ctx.Err() != nil {
			return 0, false
		}
		l.log.Warn("read last batch", zap.Error(err))
		sleep(ctx, backoff(attempt))
	}
}

// consume reads the shard from l.next with an ordered consumer and cuts
// batches until ctx ends (nil) or the consumer fails (the error).
func (l *shardLoop) consume(ctx context.Context) error {
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: []string{l.subject}, DeliverPolicy: jetstream.DeliverAllPolicy}
	if l.next > 0 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = l.next
	}
	cons, err := l.js.OrderedConsumer(ctx, streams.Events, cc)
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("messages: %w", err)
	}
	defer it.Stop()

	// wait ends at the age deadline of the open batch or the next due
	// purge, if any. The deadline is fixed while a batch is open, so one
	// context serves every Next of that batch.
	wait, cancelWait := ctx, context.CancelFunc(func() {})
	defer func() { cancelWait() }()
	var deadline time.Time
	for {
		if d := l.wakeAt(); !d.Equal(deadline) {
			cancelWait()
			deadline = d
			wait, cancelWait = until(ctx, d)
		}
		msg, err := it.Next(jetstream.NextContext(wait))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				if d := l.builder.Deadline(); !d.IsZero() && !time.Now().Before(d) {
					l.cut(ctx, cutAge)
				}
				l.purgeDue(ctx)
				continue
			}
			return fmt.Errorf("next: %w", err)
		}
		if err := l.take(ctx, msg); err != nil {
			return err
		}
	}
}

// take adds one EVENTS message to the open batch, cutting before it when
// it does not fit and after it when the batch is full.
func (l *shardLoop) take(ctx context.Context, msg jetstream.Msg) error {
	meta, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("message metadata: %w", err)
	}
	seq := meta.Sequence.Stream
	l.next = seq + 1
	l.m.pending.Set(float64(meta.NumPending))
	events, err := event.Decode(msg.Data())
	if err != nil {
		l.deadLetter(ctx, msg, seq, err)
		return nil
	}
	if len(events) == 0 {
		return nil
	}
	size := 0
	for i := range events {
		size += events[i].Size()
	}
	p := l.s.cfg.Policy
	if !l.builder.Fits(len(events), size) {
		reason := cutBytes
		if l.builder.Len()+len(events) > p.MaxRows {
			reason = cutRows
		}
		l.cut(ctx, reason)
	}
	l.trace.add(trace.SpanContextFromContext(telemetry.Extract(context.Background(), msg.Headers())), l.s.cfg.MaxLinks)
	if l.builder.Add(seq, events, time.Now()) {
		reason := cutBytes
		if l.builder.Len() >= p.MaxRows {
			reason = cutRows
		}
		l.cut(ctx, reason)
	}
	return nil
}

// cut publishes the open batch. When shutdown interrupts the publish the
// batch is held for finish, so it is never lost or split.
func (l *shardLoop) cut(ctx context.Context, reason string) {
	b := l.builder.Cut()
	if b == nil {
		return
	}
	c := &cutBatch{b: b, trace: l.trace, reason: reason}
	l.trace = batchTrace{}
	if err := l.publish(ctx, c); err != nil {
		l.held = c
	}
}

// finish publishes, at shutdown, the held batch and then the partial one,
// with a fresh context bounded by ShutdownTimeout. What it cannot publish
// stays in EVENTS and is read again by the next owner of the shard.
func (l *shardLoop) finish(parent context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), l.s.cfg.ShutdownTimeout)
	defer cancel()
	if l.held != nil {
		if err := l.publish(ctx, l.held); err != nil {
			l.log.Error("batch not published at shutdown; EVENTS keeps its events", zap.String("batch", l.held.b.ID()), zap.Error(err))
			return
		}
		l.held = nil
	}
	if b := l.builder.Cut(); b != nil {
		c := &cutBatch{b: b, trace: l.trace, reason: cutShutdown}
		l.trace = batchTrace{}
		if err := l.publish(ctx, c); err != nil {
			l.log.Error("batch not published at shutdown; EVENTS keeps its events", zap.String("batch", b.ID()), zap.Error(err))
		}
	}
}

// publish sends a batch, retrying until its PubAck or the end of ctx, then
// purges EVENTS below it.
func (l *shardLoop) publish(ctx context.Context, c *cutBatch) error {
	b := c.b
	id := b.ID()
	data := batch.Encode(b)
	spanCtx, span := l.s.tracer.Start(c.trace.context(), "batch",
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithLinks(c.trace.links...),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", l.out),
			attribute.Int("surge.shard", l.k),
			attribute.String("surge.batch.id", id),
			attribute.Int("surge.batch.rows", b.Len()),
			attribute.Int("surge.batch.bytes", len(data)),
			attribute.String("surge.batch.cut", c.reason),
			attribute.Int("surge.batch.links_dropped", c.trace.dropped),
		))
	defer span.End()
	log := l.log.With(zap.String("batch_id", id))
	log = log.With(telemetry.TraceFields(spanCtx)...)

	first, last := strconv.FormatUint(b.FirstSeq, 10), strconv.FormatUint(b.LastSeq, 10)
	msg := &nats.Msg{
		Subject: l.out,
		Data:    data,
		Header: nats.Header{
			jetstream.MsgIDHeader:  []string{id},
			streams.HeaderBatchID:  []string{id},
			streams.HeaderFirstSeq: []string{first},
			streams.HeaderLastSeq:  []string{last},
			streams.HeaderRows:     []string{strconv.Itoa(b.Len())},
		},
	}
	telemetry.Inject(spanCtx, msg.Header)
	start := time.Now()
	if err := l.publishRetry(ctx, msg, log); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "publish")
		return err
	}
	l.s.m.publishDuration.Observe(time.Since(start).Seconds())
	l.m.batchRows.Observe(float64(b.Len()))
	l.m.batchBytes.Observe(float64(len(data)))
	l.m.batches.Inc()
	l.m.rows.Add(float64(b.Len()))
	l.m.cuts[c.reason].Inc()
	log.Debug("batch published", zap.Int("rows", b.Len()), zap.Int("bytes", len(data)), zap.String("cut", c.reason))
	l.schedulePurge(ctx, b.LastSeq)
	return nil
}

// schedulePurge marks EVENTS up to last for a purge after PurgeDelay and
// purges what is due.
func (l *shardLoop) schedulePurge(ctx context.Context, last uint64) {
	l.unpurged = append(l.unpurged, purgeMark{last: last, at: time.Now().Add(l.s.cfg.PurgeDelay)})
	l.purgeDue(ctx)
}

// purgeDue purges EVENTS up to the newest batch whose delay has passed.
// A failed purge is not retried: the next one covers its messages too.
func (l *shardLoop) purgeDue(ctx context.Context) {
	now := time.Now()
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
// batch's age deadline or the next purge, whichever is first; zero if none.
func (l *shardLoop) wakeAt() time.Time {
	d := l.builder.Deadline()
	if len(l.unpurged) > 0 && (d.IsZero() || l.unpurged[0].at.Before(d)) {
		d = l.unpurged[0].at
	}
	return d
}

// purge drops the shard's EVENTS messages up to last. It runs to the end
// even when shutdown starts meanwhile, bounded by PublishTimeout. A failure
// is only logged: the purge after the next batch covers these messages too.
func (l *shardLoop) purge(ctx context.Context, last uint64) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.s.cfg.PublishTimeout)
	defer cancel()
	err := l.events.Purge(pctx, jetstream.WithPurgeSubject(l.subject), jetstream.WithPurgeSequence(last+1))
	if err != nil {
		l.m.purgeFailures.Inc()
		l.log.Warn("purge events", zap.Uint64("below", last+1), zap.Error(err))
	}
}

// deadLetter publishes a corrupt EVENTS message to DEAD_LETTER; it is then
// skipped. The attempt outlives shutdown by at most ShutdownTimeout.
func (l *shardLoop) deadLetter(ctx context.Context, msg jetstream.Msg, seq uint64, cause error) {
	seqText := strconv.FormatUint(seq, 10)
	dl := &nats.Msg{
		Subject: streams.DeadLetterSubject("batcher", l.k),
		Data:    msg.Data(),
		Header: nats.Header{
			jetstream.MsgIDHeader:   []string{"batcher:" + seqText},
			streams.HeaderReason:    []string{cause.Error()},
			streams.HeaderSource:    []string{msg.Subject()},
			streams.HeaderSourceSeq: []string{seqText},
		},
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.s.cfg.ShutdownTimeout)
	defer cancel()
	if err := l.publishRetry(dctx, dl, l.log); err != nil {
		l.log.Error("dead letter not published; the corrupt message is skipped", zap.Uint64("seq", seq), zap.Error(err))
		return
	}
	l.m.deadLetters.Inc()
	l.log.Warn("dead-lettered corrupt message", zap.Uint64("seq", seq), zap.Error(cause))
}

// publishRetry publishes msg synchronously until a PubAck or the end of ctx.
func (l *shardLoop) publishRetry(ctx context.Context, msg *nats.Msg, log *zap.Logger) error {
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, l.s.cfg.PublishTimeout)
		_, err := l.js.PublishMsg(pctx, msg)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("publish %s: %w", msg.Subject, err)
		}
		l.m.retries.Inc()
		log.Warn("publish failed, retrying", zap.String("subject", msg.Subject), zap.Int("attempt", attempt), zap.Error(err))
		sleep(ctx, backoff(attempt))
	}
}

// backoff is the wait before attempt n (from 1): doubling from 100ms to 10s.
func backoff(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	return min(100*time.Millisecond<<min(n-1, 8), 10*time.Second)
}

// until is ctx ending at d too; ctx itself when d is zero.
func until(ctx context.Context, d time.Time) (context.Context, context.CancelFunc) {
	if d.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, d)
}

// sleep waits for d or the end of ctx.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
