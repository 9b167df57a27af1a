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
package partitioner

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
}

// New builds a partitioner and opens its admin listener; it does no
// network I/O to NATS.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("partitioner config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:    "partitioner",
		NATS:    cfg.NATS,
		Streams: cfg.Streams,
		Admin:   cfg.Admin,
		JetStream: []jetstream.JetStreamOpt{
			jetstream.WithPublishAsyncMaxPending(cfg.MaxPublishPending),
			jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout),
		},
	}, deps)
	if err != nil {
		return nil, err
	}
	return &Service{
		cfg:    cfg,
		host:   host,
		logger: host.Logger,
		tracer: host.Tracer,
		m:      newMetrics(host.Registry, cfg.Shards),
		parser: &event.Parser{Limits: event.Limits{MaxEvents: cfg.Producers.MaxEvents, MaxEventBytes: cfg.Producers.MaxEventBytes}},
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

// partition is the body of the lifecycle: it creates the shared consumer
// and runs the workers and the lag poller until ctx ends.
func (s *Service) partition(ctx context.Context, conn service.Conn) error {
	cons, err := conn.JS.CreateOrUpdateConsumer(ctx, streams.Ingest, jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "Surge partitioners, shared",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: s.cfg.MaxAckPending,
	})
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", ConsumerName, err)
	}
	s.logger.Info("partitioning", zap.Int("shards", s.cfg.Shards), zap.Int("workers", s.cfg.Workers))

	var wg sync.WaitGroup
	wg.Go(func() { s.pollLag(ctx, cons) })
	for range s.cfg.Workers {
		w := &worker{s: s, js: conn.JS, groups: make([][]event.Event, s.cfg.Shards)}
		wg.Go(func() { w.run(ctx, cons) })
	}
	wg.Wait()
	return nil
}

// pollLag reads the consumer's pending counts every InfoInterval.
func (s *Service) pollLag(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(s.cfg.InfoInterval)
	defer t.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := cons.Info(ictx)
		cancel()
		if err == nil {
			s.m.consumerPending.Set(float64(info.NumPending))
			s.m.ackPending.Set(float64(info.NumAckPending))
		} else if ctx.Err() == nil {
			s.logger.Debug("consumer info", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// worker is one fetch-publish-ack loop. Not safe for concurrent use.
type worker struct {
	s        *Service
	js       jetstream.JetStream
	groups   [][]event.Event // by shard, reused
	inflight []input         // the fetched batch, reused
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

func (w *worker) run(ctx context.Context, cons jetstream.Consumer) {
	// Each worker has its own backoff, so workers whose fetches failed
	// together do not retry in lockstep.
	b := w.s.cfg.Retry.NewBackOff()
	failures := 0
	for ctx.Err() == nil {
		// The fetch is not bound to ctx: once asked for, messages are
		// handled to the end, so a shutdown leaves none to redeliver.
		mb, err := cons.Fetch(w.s.cfg.FetchBatch, jetstream.FetchMaxWait(w.s.cfg.FetchMaxWait))
		if err != nil {
			failures++
			wait := b.NextBackOff()
			w.s.logger.Warn("fetch", zap.Error(err), zap.Int("failures", failures), zap.Duration("wait", wait))
			retry.Sleep(ctx, wait)
			continue
		}
		failures = 0
		b.Reset()
		w.handle(mb)
		if err := mb.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			w.s.logger.Debug("fetch ended", zap.Error(err))
		}
	}
}

// handle publishes the groups of every message of the batch as they
// arrive, then waits for the PubAcks and settles each message in turn:
// the publishes of a whole batch are in flight together.
func (w *worker) handle(mb jetstream.MessageBatch) {
	w.inflight = w.inflight[:0]
	for msg := range mb.Messages() {
		w.inflight = append(w.inflight, input{msg: msg})
		w.publish(&w.inflight[len(w.inflight)-1])
	}
	for i := range w.inflight {
		w.settle(&w.inflight[i])
		w.inflight[i] = input{} // drop references for the collector
	}
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
		f, err := w.js.PublishMsgAsync(m, jetstream.WithStallWait(s.cfg.PublishTimeout))
		if err != nil {
			// The groups already sent are republished with the same ids
			// on redelivery, and dropped as duplicates.
			in.err = fmt.Errorf("publish %s: %w", m.Subject, err)
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
	if _, err := w.js.PublishMsg(ctx, m); err != nil {
		s.m.messages.WithLabelValues(outcomeNaked).Inc()
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
}

// traceFields are the trace_id and span_id of span, for the log lines of
// one INGEST message.
func traceFields(span trace.Span) []zap.Field {
	return telemetry.TraceFields(trace.ContextWithSpan(context.Background(), span))
}
