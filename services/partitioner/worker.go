package partitioner

import (
	"context"
	"errors"
	"fmt"
	"time"

	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// asyncPublisher is what a worker needs of JetStream: publishing the
// shard groups without waiting for each PubAck, and a whole message's
// dead letter synchronously.
type asyncPublisher interface {
	PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// worker is one fetch-publish-ack loop. Not safe for concurrent use.
type worker struct {
	s        *Service
	js       asyncPublisher
	groups   [][]event.Event    // by shard, reused
	inflight []input            // the fetched batch, reused
	keep     liveness.Keepalive // keeps the fetched batch alive
	// timedOut is the first publish of the batch that timed out: the
	// rest of the batch is naked without a try, so a batch waits out
	// publish_timeout once, not once per message.
	timedOut error
	// events and bytes are what the fetched batch held, which its
	// tenant's quota pays for.
	events, bytes int
}

// input is one INGEST message on its way through the worker.
type input struct {
	msg       jetstream.Msg
	seq       uint64
	delivered uint64
	span      trace.Span
	start     time.Time
	futures   []jetstream.PubAckFuture
	pubSpans  []trace.Span // one per future: the publish of a shard group
	counts    []shardCount
	invalid   int // producer events dead-lettered as invalid
	// deadLetters are the PubAcks of those dead letters.
	deadLetters []jetstream.PubAckFuture
	err         error // a publish could not be started
	settled     bool  // already acked, naked or terminated
}

type shardCount struct{ shard, events int }

// fetchRetryMax caps the wait after a failed fetch. A fetch costs one
// small request, and the wait is how late the worker notices that the
// cause is gone (NATS reconnected, the consumer recreated): it must stay
// short whatever retry.max says.
const fetchRetryMax = time.Second

func (w *worker) run(ctx context.Context, src *source) {
	// Each worker has its own backoff, so workers whose fetches failed
	// together do not retry in lockstep.
	rc := w.s.cfg.Retry
	rc.Max = min(rc.Max, fetchRetryMax)
	b := rc.NewBackOff()
	failures := 0
	for ctx.Err() == nil {
		// While the sinks are behind the tenants with a backlog are held
		// back (the scheduler's hold): their work waits in INGEST, and the
		// watchdog says what the hold waits on.
		if !w.s.gate.holding() {
			w.s.wd.Waiting(w.s.waitingOn("fetch from " + streams.Ingest))
		}
		tr, ok := src.sched.take(ctx, w.s.cfg.FetchMaxWait)
		if !ok {
			continue // no tenant has work
		}
		n, err := w.fetch(tr)
		src.sched.charged(tr, n, w.events, w.bytes)
		src.sched.done(tr, n, n == 0 && err != nil)
		if err != nil && gone(err) && ctx.Err() == nil {
			// Deleted, or lost in a NATS restart: made again at once.
			rctx, cancel := context.WithTimeout(ctx, apiTimeout)
			if rerr := src.recreate(rctx, tr.t.name, "gone", tr.cons); rerr == nil {
				err = nil
			} else {
				err = fmt.Errorf("%w; %w", err, rerr)
			}
			cancel()
		}
		if err != nil {
			failures++
			wait := b.NextBackOff()
			if failures&(failures-1) == 0 { // the 1st, 2nd, 4th, 8th... failure in a row
				w.s.logger.Warn("fetch", zap.String("tenant", tr.t.name), zap.Error(err), zap.Int("failures", failures), zap.Duration("wait", wait))
			}
			retry.Sleep(ctx, wait)
			continue
		}
		failures = 0
		b.Reset()
	}
}

// fetch fetches one batch of the turn's tenant, at most the turn's size
// (fetch_batch, or what its quota has room for) messages, waiting up to fetch_max_wait for it to fill when the turn
// says so, and handles what it got. It returns how many messages it got.
// The fetch is not bound to the service's context: once asked for,
// messages are handled to the end, so a shutdown leaves none to
// redeliver. An empty fetch is no error; what is (no responders while the
// consumer is gone, the consumer deleted) paces the next fetch.
func (w *worker) fetch(tr turn) (int, error) {
	w.events, w.bytes = 0, 0
	size := w.s.cfg.FetchBatch
	if tr.size > 0 {
		size = tr.size
	}
	var mb jetstream.MessageBatch
	var err error
	if tr.wait {
		mb, err = tr.cons.Fetch(size, jetstream.FetchMaxWait(w.s.cfg.FetchMaxWait))
	} else {
		mb, err = tr.cons.FetchNoWait(size)
	}
	if err != nil {
		return 0, err
	}
	n := w.handle(mb)
	return n, mb.Error()
}

// handle publishes the groups of every message of the batch as they
// arrive, then waits for the PubAcks and settles each message in turn:
// the publishes of a whole batch are in flight together. The batch is
// kept alive (InProgress) until every message of it is settled. It
// returns how many messages the batch had.
func (w *worker) handle(mb jetstream.MessageBatch) int {
	defer w.keep.Stop()
	w.inflight = w.inflight[:0]
	w.timedOut = nil
	for msg := range mb.Messages() {
		w.bytes += len(msg.Data())
		w.keep.Hold(msg)
		w.inflight = append(w.inflight, input{msg: msg})
		w.publish(&w.inflight[len(w.inflight)-1])
	}
	n := len(w.inflight)
	if n == 0 {
		return 0
	}
	w.s.wd.Waiting(w.s.waitingOn("PubAcks from " + streams.Events))
	for i := range w.inflight {
		w.settle(&w.inflight[i])
		w.inflight[i] = input{} // drop references for the collector
	}
	return n
}

// publish decodes one INGEST message, routes its events to their shards
// and starts the publish of each shard's group; settle waits for them.
func (w *worker) publish(in *input) {
	ctx, events, ok := w.decode(in)
	if !ok {
		return
	}
	w.events += len(events)
	w.route(events)
	if in.span.IsRecording() {
		in.span.SetAttributes(attribute.Int64("surge.ingest.seq", int64(in.seq)), attribute.Int("surge.events", len(events)))
	}
	w.publishGroups(ctx, in)
}

// decode starts the message's span, reads its metadata and its events:
// ingest's encoded request, or a producer's JSON. It reports false when
// the message is done with here: dead-lettered, or failed (in.err) for a
// retry of the whole message.
func (w *worker) decode(in *input) (context.Context, []event.Event, bool) {
	s := w.s
	in.start = time.Now()
	ctx := telemetry.Extract(context.Background(), in.msg.Headers())
	ctx, in.span = s.tracer.Start(ctx, "partition", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(semconv.MessagingSystemKey.String("nats"), attribute.String("messaging.source.name", in.msg.Subject())))
	meta, err := in.msg.Metadata()
	if err != nil {
		in.err = fmt.Errorf("message metadata: %w", err)
		return ctx, nil, false
	}
	in.seq, in.delivered = meta.Sequence.Stream, meta.NumDelivered
	if in.delivered > 1 {
		s.m.redelivered.Inc()
	}
	if w.timedOut != nil {
		in.err = fmt.Errorf("not published, an earlier publish of the batch timed out: %w", w.timedOut)
		return ctx, nil, false
	}
	if tenant, ok := streams.ProducerTenant(in.msg.Subject()); ok {
		events, err := w.parseProducerMessage(ctx, in, tenant, meta.Timestamp)
		if in.err != nil {
			return ctx, nil, false // a dead letter could not be published: retried whole
		}
		if err != nil {
			w.deadLetter(in, streams.InvalidSubject(tenant), err)
			return ctx, nil, false
		}
		return ctx, events, true
	}
	events, err := event.Decode(in.msg.Data())
	if err != nil {
		w.deadLetter(in, streams.DeadLetterSubject("partitioner", 0), err)
		return ctx, nil, false
	}
	return ctx, events, true
}

// route groups events by shard into w.groups, in their order.
func (w *worker) route(events []event.Event) {
	for k := range w.groups {
		w.groups[k] = w.groups[k][:0]
	}
	for i := range events {
		k := shard.Of(events[i].Tenant, events[i].UserID, w.s.cfg.Shards)
		w.groups[k] = append(w.groups[k], events[i])
	}
}

// publishGroups starts the publish of each shard's group of in, each with
// its publish span. A publish that cannot start fails the message (in.err);
// the groups already sent are republished with the same ids on
// redelivery, and dropped as duplicates.
func (w *worker) publishGroups(ctx context.Context, in *input) {
	for k, group := range w.groups {
		if len(group) == 0 {
			continue
		}
		// The message carries its publish span, which the batcher links
		// its batch span to. Unsampled, the span records nothing.
		subject := streams.EventsSubject(k)
		pubCtx, pubSpan := w.s.tracer.Start(ctx, "publish "+subject, trace.WithSpanKind(trace.SpanKindProducer))
		if pubSpan.IsRecording() {
			pubSpan.SetAttributes(
				semconv.MessagingSystemKey.String("nats"),
				semconv.MessagingDestinationName(subject),
				semconv.MessagingBatchMessageCount(len(group)),
				attribute.Int("surge.shard", k),
			)
		}
		f, err := w.publishAsync(streams.EventsMsg{Shard: k, IngestSeq: in.seq, Events: group}.Msg(pubCtx))
		if err != nil {
			in.err = err
			pubSpan.RecordError(err)
			pubSpan.SetStatus(codes.Error, "publish")
			pubSpan.End()
			return
		}
		in.futures = append(in.futures, f)
		in.pubSpans = append(in.pubSpans, pubSpan)
		in.counts = append(in.counts, shardCount{shard: k, events: len(group)})
	}
}

// publishAsync starts the publish of m, waiting at most PublishTimeout
// for room among the pending publishes.
func (w *worker) publishAsync(m *nats.Msg) (jetstream.PubAckFuture, error) {
	f, err := w.js.PublishMsgAsync(m, jetstream.WithStallWait(w.s.cfg.PublishTimeout))
	if err != nil {
		err = fmt.Errorf("publish %s: %w", m.Subject, err)
		w.noteTimeout(err)
		return nil, err
	}
	return f, nil
}

// noteTimeout remembers the first publish of the batch that timed out.
func (w *worker) noteTimeout(err error) {
	if w.timedOut == nil && (errors.Is(err, jetstream.ErrTooManyStalledMsgs) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) {
		w.timedOut = err
	}
}

// settle waits for the PubAcks of in and acks it, or naks it with a delay
// growing with its deliveries (jittered, so the NAKs of a batch that
// failed together are not redelivered together).
func (w *worker) settle(in *input) {
	s := w.s
	defer in.span.End()
	if in.settled {
		return
	}
	err := in.err
	for i, f := range in.futures {
		select {
		case <-f.Ok():
		case perr := <-f.Err():
			in.pubSpans[i].RecordError(perr)
			in.pubSpans[i].SetStatus(codes.Error, "publish")
			if err == nil {
				err = fmt.Errorf("publish %s: %w", f.Msg().Subject, perr)
			}
		}
		in.pubSpans[i].End()
	}
	for _, f := range in.deadLetters {
		select {
		case <-f.Ok():
		case perr := <-f.Err():
			if err == nil {
				err = fmt.Errorf("publish %s: %w", f.Msg().Subject, perr)
			}
		}
	}
	if err != nil {
		in.span.RecordError(err)
		in.span.SetStatus(codes.Error, "publish")
		s.m.messages.WithLabelValues(outcomeNaked).Inc()
		s.failed(err)
		delay := s.cfg.Retry.Delay(int(in.delivered))
		s.logger.Warn("partition failed, will retry", append(traceFields(in.span),
			zap.Uint64("seq", in.seq), zap.Duration("delay", delay), zap.Error(err))...)
		if nerr := in.msg.NakWithDelay(delay); nerr != nil {
			s.logger.Warn("nak", append(traceFields(in.span), zap.Uint64("seq", in.seq), zap.Error(nerr))...)
		}
		return
	}
	s.m.publishDuration.Observe(time.Since(in.start).Seconds())
	if aerr := in.msg.Ack(); aerr != nil {
		// Redelivery republishes the same ids: duplicates are dropped.
		s.logger.Warn("ack", append(traceFields(in.span), zap.Uint64("seq", in.seq), zap.Error(aerr))...)
	}
	s.m.messages.WithLabelValues(outcomeAcked).Inc()
	s.settled()
	for _, c := range in.counts {
		s.m.events[c.shard].Add(float64(c.events))
	}
	s.m.invalid.Add(float64(in.invalid))
}

// settled reports a request acked or terminated: progress for the
// watchdog, and the last failure is over.
func (s *Service) settled() {
	s.wd.Progress()
	if s.failure.Load() != nil {
		s.failure.Store(nil)
	}
}

// failed records why a request was naked, for the stall report.
func (s *Service) failed(err error) {
	msg := err.Error()
	s.failure.Store(&msg)
}

// traceFields are the trace_id and span_id of span, for the log lines of
// one INGEST message.
func traceFields(span trace.Span) []zap.Field {
	return telemetry.TraceFields(trace.ContextWithSpan(context.Background(), span))
}
