// Package partitioner consumes INGEST, spreads each request's events over
// the shards of EVENTS by their key, and acks a request only once every
// shard group of it is durable in EVENTS.
//
// INGEST holds two kinds of message: ingest's encoded requests
// (ingest.<tenant>) and the JSON that NATS and MQTT producers publish
// straight to surge.in.<tenant>.<anything>, which the partitioner
// validates itself (see parseProducerMessage).
//
// Every partitioner process pulls from one shared durable consumer, so
// adding processes adds throughput. A redelivered request republishes the
// same message ids (<ingest seq>:<shard>), which EVENTS drops as duplicates.
//
// Liveness: the consumer's AckWait is short (seconds), so the requests a
// crashed or cut-off partitioner held are redelivered within seconds, and
// a worker keeps the requests it holds alive with InProgress while it
// waits for PubAcks. A watchdog on the input names any stall (work
// pending, nothing settled for stall_timeout) and recreates the consumer,
// as the lag poller does at once when the consumer is gone.
package partitioner

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// ConsumerName is the durable INGEST consumer every partitioner shares.
const ConsumerName = "partitioner"

// Service is a partitioner.
type Service struct {
	cfg    Config
	host   *service.Host
	logger *zap.Logger
	tracer trace.Tracer
	m      *metrics
	// parser validates the JSON of NATS and MQTT producers.
	parser *event.Parser
	// wd watches the input for stalls.
	wd *service.Watchdog
	// failure is the last error that kept a request from being settled,
	// cleared by the next ack: the stall report says why.
	failure atomic.Pointer[string]
}

// New builds a partitioner and opens its admin listener; it does no
// network I/O to NATS.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("partitioner config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:   "partitioner",
		Common: cfg.Common,
		JetStream: []jetstream.JetStreamOpt{
			jetstream.WithPublishAsyncMaxPending(cfg.MaxPublishPending),
			jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout),
		},
	}, deps)
	if err != nil {
		return nil, err
	}
	host.Admin().NotReady(checkConsumer, "not created yet")
	return &Service{
		cfg:    cfg,
		host:   host,
		logger: host.Logger,
		tracer: host.Tracer,
		m:      newMetrics(host.Registry, cfg.Shards),
		parser: &event.Parser{Limits: event.Limits{MaxEvents: cfg.Producers.MaxEvents, MaxEventBytes: cfg.Producers.MaxEventBytes}},
		wd:     host.Watchdogs(cfg.StallTimeout).For("input"),
	}, nil
}

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.host.AdminAddr() }

// Run partitions until ctx ends, then stops fetching and settles every
// fetched message (PubAcks awaited, acks sent) before the connection
// drains.
func (s *Service) Run(ctx context.Context) error {
	return s.host.Run(ctx, s.partition)
}

// checkConsumer is the readiness check of the shared consumer: not ready
// until it is created, nor while it is gone and not yet recreated.
const checkConsumer = "consumer"

// apiTimeout bounds one JetStream API request of the partitioner: the
// consumer's info or its creation.
const apiTimeout = 5 * time.Second

// consumerConfig is the shared INGEST consumer.
func (c Config) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "Surge partitioners, shared",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: c.MaxAckPending,
	}
}

// partition is the body of the lifecycle: it creates the shared consumer
// and runs the workers and the lag poller until ctx ends.
func (s *Service) partition(ctx context.Context, conn service.Conn) error {
	src := &source{js: conn.JS, cfg: s.cfg.consumerConfig()}
	// A fresh cluster may still be electing the stream's leader. The
	// server's reason shows on /readyz until the consumer is there.
	err := retry.Do(ctx, s.cfg.Retry, func() error { return src.create(ctx) }, func(attempt int, err error, wait time.Duration) {
		s.host.Admin().NotReady(checkConsumer, err.Error())
		s.logger.Warn("create consumer, retrying", zap.String("consumer", ConsumerName), zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err != nil {
		return err // ctx ended
	}
	s.host.Admin().Ready(checkConsumer)
	s.wd.Idle() // the stall clock starts with the workers, not at New
	s.logger.Info("partitioning", zap.Int("shards", s.cfg.Shards), zap.Int("workers", s.cfg.Workers), zap.Duration("ack_wait", s.cfg.AckWait))

	var wg sync.WaitGroup
	wg.Go(func() { s.pollLag(ctx, src) })
	for range s.cfg.Workers {
		w := &worker{s: s, js: conn.JS, groups: make([][]event.Event, s.cfg.Shards), keep: keeper{every: s.cfg.AckWait / 3}}
		wg.Go(func() { w.run(ctx, src) })
	}
	wg.Wait()
	return nil
}

// source is the shared INGEST consumer. The lag poller recreates it when
// it is gone (a NATS restart with an empty store) or stalled; the workers
// take the current handle at each fetch.
type source struct {
	js   jetstream.JetStream
	cfg  jetstream.ConsumerConfig
	cons atomic.Pointer[jetstream.Consumer]
}

// create creates the consumer, or updates it to cfg, and hands the new
// handle to the workers.
func (src *source) create(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	c, err := src.js.CreateOrUpdateConsumer(ctx, streams.Ingest, src.cfg)
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", ConsumerName, err)
	}
	src.cons.Store(&c)
	return nil
}

// consumer is the current handle.
func (src *source) consumer() jetstream.Consumer { return *src.cons.Load() }

// pollLag reads the consumer's state every InfoInterval: it sets the lag
// metrics and gives the watchdog the backlog. It recreates the consumer
// when the server no longer has it, and when the watchdog calls for a
// repair; a failed re-creation is tried again at the next tick.
func (s *Service) pollLag(ctx context.Context, src *source) {
	t := time.NewTicker(s.cfg.InfoInterval)
	defer t.Stop()
	recreate := "" // why the consumer must be recreated
	failures := 0  // reads failed in a row
	for {
		ictx, cancel := context.WithTimeout(ctx, apiTimeout)
		info, err := src.consumer().Info(ictx)
		cancel()
		if err != nil {
			failures++
		} else {
			failures = 0
		}
		switch {
		case err == nil:
			s.m.consumerPending.Set(float64(info.NumPending))
			s.m.ackPending.Set(float64(info.NumAckPending))
			s.wd.Check(info.NumPending + uint64(info.NumAckPending))
			if s.wd.Repair() {
				recreate = "stalled"
			}
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			recreate = "gone"
			s.host.Admin().NotReady(checkConsumer, "gone, recreating")
		case !src.js.Conn().IsConnected():
			// Readiness says NATS is down (check nats); the stall clock
			// restarts once it is back.
			s.wd.Idle()
		case ctx.Err() == nil && failures&(failures-1) == 0: // the 1st, 2nd, 4th... in a row
			// Unread, the backlog escapes the watchdog: say so.
			s.logger.Warn("consumer info", zap.Int("failures", failures), zap.Error(err))
		}
		if recreate != "" && ctx.Err() == nil {
			if err := src.create(ctx); err != nil {
				s.host.Admin().NotReady(checkConsumer, recreate+", recreating: "+err.Error())
				s.logger.Warn("recreate consumer", zap.String("why", recreate), zap.Error(err))
			} else {
				s.host.Admin().Ready(checkConsumer)
				s.logger.Warn("consumer recreated", zap.String("consumer", ConsumerName), zap.String("why", recreate))
				recreate = ""
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// waitingOn is what a worker waits on, with the last failure to settle a
// request when none was acked since: the stall report then says why.
func (s *Service) waitingOn(what string) string {
	if f := s.failure.Load(); f != nil {
		return what + " (last failure: " + *f + ")"
	}
	return what
}

// worker is one fetch-publish-ack loop. Not safe for concurrent use.
type worker struct {
	s        *Service
	js       jetstream.JetStream
	groups   [][]event.Event // by shard, reused
	inflight []input         // the fetched batch, reused
	keep     keeper          // keeps the fetched batch alive
	// timedOut is the first publish of the batch that timed out: the
	// rest of the batch is naked without a try, so a batch waits out
	// publish_timeout once, not once per message.
	timedOut error
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
		w.s.wd.Waiting(w.s.waitingOn("fetch from " + streams.Ingest))
		if err := w.fetch(src.consumer()); err != nil {
			failures++
			wait := b.NextBackOff()
			if failures&(failures-1) == 0 { // the 1st, 2nd, 4th, 8th... failure in a row
				w.s.logger.Warn("fetch", zap.Error(err), zap.Int("failures", failures), zap.Duration("wait", wait))
			}
			retry.Sleep(ctx, wait)
			continue
		}
		failures = 0
		b.Reset()
	}
}

// fetch fetches one batch, bounded by FetchMaxWait, and handles what it
// got. The fetch is not bound to the service's context: once asked for,
// messages are handled to the end, so a shutdown leaves none to
// redeliver. An empty fetch is no error; what is (no responders while the
// consumer is gone, the consumer deleted) paces the next fetch.
func (w *worker) fetch(cons jetstream.Consumer) error {
	mb, err := cons.Fetch(w.s.cfg.FetchBatch, jetstream.FetchMaxWait(w.s.cfg.FetchMaxWait))
	if err != nil {
		return err
	}
	w.handle(mb)
	return mb.Error()
}

// handle publishes the groups of every message of the batch as they
// arrive, then waits for the PubAcks and settles each message in turn:
// the publishes of a whole batch are in flight together. The batch is
// kept alive (InProgress) until every message of it is settled.
func (w *worker) handle(mb jetstream.MessageBatch) {
	defer w.keep.stop()
	w.inflight = w.inflight[:0]
	w.timedOut = nil
	for msg := range mb.Messages() {
		w.keep.hold(msg)
		w.inflight = append(w.inflight, input{msg: msg})
		w.publish(&w.inflight[len(w.inflight)-1])
	}
	if len(w.inflight) == 0 {
		return
	}
	w.s.wd.Waiting(w.s.waitingOn("PubAcks from " + streams.Events))
	for i := range w.inflight {
		w.settle(&w.inflight[i])
		w.inflight[i] = input{} // drop references for the collector
	}
}

// keeper keeps the messages of one worker batch alive while the worker
// holds them: an InProgress every AckWait/3 restarts their AckWait, so it
// expires only for the messages of a dead or cut-off process, not for
// ones waiting on a slow PubAck. Its goroutine runs from the batch's first
// message until stop, which the worker calls once the batch is settled.
type keeper struct {
	every time.Duration
	mu    sync.Mutex
	held  []jetstream.Msg
	quit  chan struct{} // nil while no goroutine runs
	done  chan struct{}
}

// hold adds msg to the messages kept alive.
func (k *keeper) hold(msg jetstream.Msg) {
	k.mu.Lock()
	k.held = append(k.held, msg)
	k.mu.Unlock()
	if k.quit == nil {
		k.quit, k.done = make(chan struct{}), make(chan struct{})
		go k.run(k.quit, k.done)
	}
}

func (k *keeper) run(quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(k.every)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case <-t.C:
		}
		k.mu.Lock()
		held := k.held // hold only appends: this prefix stays as it is
		k.mu.Unlock()
		for _, msg := range held {
			// It fails for a message already settled, which needs none,
			// or on a closed connection, whose messages are redelivered
			// anyway.
			_ = msg.InProgress()
		}
	}
}

// stop ends the goroutine and forgets the batch.
func (k *keeper) stop() {
	if k.quit == nil {
		return
	}
	close(k.quit)
	<-k.done
	k.quit, k.done = nil, nil
	clear(k.held)
	k.held = k.held[:0]
}

func (w *worker) publish(in *input) {
	s := w.s
	in.start = time.Now()
	ctx := telemetry.Extract(context.Background(), in.msg.Headers())
	ctx, in.span = s.tracer.Start(ctx, "partition", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.source.name", in.msg.Subject())))
	meta, err := in.msg.Metadata()
	if err != nil {
		in.err = fmt.Errorf("message metadata: %w", err)
		return
	}
	in.seq, in.delivered = meta.Sequence.Stream, meta.NumDelivered
	if in.delivered > 1 {
		s.m.redelivered.Inc()
	}
	if w.timedOut != nil {
		in.err = fmt.Errorf("not published, an earlier publish of the batch timed out: %w", w.timedOut)
		return
	}

	var events []event.Event
	if tenant, ok := streams.ProducerTenant(in.msg.Subject()); ok {
		events, err = w.parseProducerMessage(ctx, in, tenant, meta.Timestamp)
		if in.err != nil {
			return // a dead letter could not be published: retried whole
		}
		if err != nil {
			w.deadLetter(in, streams.InvalidSubject(tenant), err)
			return
		}
	} else if events, err = event.Decode(in.msg.Data()); err != nil {
		w.deadLetter(in, streams.DeadLetterSubject("partitioner", 0), err)
		return
	}
	for k := range w.groups {
		w.groups[k] = w.groups[k][:0]
	}
	for i := range events {
		k := shard.Of(events[i].Tenant, events[i].UserID, s.cfg.Shards)
		w.groups[k] = append(w.groups[k], events[i])
	}
	if in.span.IsRecording() {
		in.span.SetAttributes(attribute.Int64("surge.ingest.seq", int64(in.seq)), attribute.Int("surge.events", len(events)))
	}
	seq := strconv.FormatUint(in.seq, 10)
	for k, group := range w.groups {
		if len(group) == 0 {
			continue
		}
		size := 2
		for i := range group {
			size += group[i].Size() + 16
		}
		m := &nats.Msg{
			Subject: streams.EventsSubject(k),
			Data:    event.AppendEncoded(make([]byte, 0, size), group),
			Header: nats.Header{
				jetstream.MsgIDHeader: []string{seq + ":" + strconv.Itoa(k)},
				streams.HeaderRows:    []string{strconv.Itoa(len(group))},
			},
		}
		// The message carries its publish span, which the batcher links
		// its batch span to. Unsampled, the span records nothing.
		pubCtx, pubSpan := s.tracer.Start(ctx, "publish "+m.Subject, trace.WithSpanKind(trace.SpanKindProducer))
		if pubSpan.IsRecording() {
			pubSpan.SetAttributes(
				attribute.String("messaging.system", "nats"),
				attribute.String("messaging.destination.name", m.Subject),
				attribute.Int("messaging.batch.message_count", len(group)),
				attribute.Int("surge.shard", k),
			)
		}
		telemetry.Inject(pubCtx, m.Header)
		f, err := w.publishAsync(m)
		if err != nil {
			// The groups already sent are republished with the same ids
			// on redelivery, and dropped as duplicates.
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

// deadLetter publishes an undecodable message to DEAD_LETTER on subject
// and terminates it, or naks it when the dead letter cannot be written.
func (w *worker) deadLetter(in *input, subject string, cause error) {
	s := w.s
	in.settled = true
	in.span.RecordError(cause)
	in.span.SetStatus(codes.Error, "corrupt")
	m := streams.DeadLetterMsg{
		Service:   "partitioner",
		Subject:   subject,
		Data:      in.msg.Data(),
		Reason:    cause.Error(),
		Source:    in.msg.Subject(),
		SourceSeq: in.seq,
	}.Msg()
	// Not bound to the service's context: a shutdown settles what it fetched.
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
	defer cancel()
	s.wd.Waiting(s.waitingOn("PubAck from " + streams.DeadLetter))
	_, err := w.js.PublishMsg(ctx, m)
	s.wd.Waiting(s.waitingOn("fetch from " + streams.Ingest)) // the rest of the batch
	if err != nil {
		err = fmt.Errorf("publish %s: %w", m.Subject, err)
		w.noteTimeout(err)
		s.m.messages.WithLabelValues(outcomeNaked).Inc()
		s.failed(err)
		s.logger.Warn("dead letter failed, will retry", append(traceFields(in.span), zap.Uint64("seq", in.seq), zap.Error(err))...)
		if nerr := in.msg.NakWithDelay(s.cfg.Retry.Delay(int(in.delivered))); nerr != nil {
			s.logger.Warn("nak", zap.Uint64("seq", in.seq), zap.Error(nerr))
		}
		return
	}
	s.logger.Warn("dead-lettered message", append(traceFields(in.span), zap.Uint64("seq", in.seq), zap.String("subject", in.msg.Subject()), zap.Error(cause))...)
	if err := in.msg.Term(); err != nil {
		s.logger.Warn("term", zap.Uint64("seq", in.seq), zap.Error(err))
	}
	s.m.deadLetters.Inc()
	s.m.messages.WithLabelValues(outcomeDeadLetter).Inc()
	s.settled()
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
