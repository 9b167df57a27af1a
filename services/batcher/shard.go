package batcher

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
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// publisher is what a shard loop needs of JetStream: publishing batches
// and dead letters, and reading its shard of EVENTS in order.
type publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
	OrderedConsumer(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error)
}

// lastMsgReader reads a subject's last message: BATCHES' tells where the
// shard's batching stopped.
type lastMsgReader interface {
	GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
}

// eventsStream is what a shard loop needs of EVENTS besides its consumer:
// the subject's last message (the backlog) and purging what is batched.
type eventsStream interface {
	lastMsgReader
	Purge(ctx context.Context, opts ...jetstream.StreamPurgeOpt) error
}

// shardLoop batches one shard. It is owned by one goroutine; the
// service's poller (watch.go) reads the atomics and may stop its consumer.
type shardLoop struct {
	cfg     *Config
	tracer  trace.Tracer
	k       int
	js      publisher
	events  eventsStream
	batches lastMsgReader
	subject string // events.shard.<k>
	out     string // batches.shard.<k>
	builder *batch.Builder
	trace   batchTrace // trace context of the open batch
	m       shardMetrics
	log     *zap.Logger
	wd      *liveness.Watchdog
	// holds reports whether this instance still owns the shard: always in
	// static mode, while its lease holds in lease mode. Checked before
	// every publish attempt.
	holds func() bool
	// typer projects each batch's properties into typed columns; nil when
	// typed columns are off.
	typer *typer
	// dedup drops copies of published events (dedup.go); nil when off.
	dedup *dedup
	// erased drops the events of users being erased (erasure.go); nil
	// drops nothing.
	erased *erased
	// sink is what the shard's sink said it has landed (landed.go); nil
	// turns the early cut off.
	sink *sinkState

	// next is the EVENTS sequence to read from; 0 means the subject's first.
	next atomic.Uint64
	// lastPending is the NumPending of the last EVENTS message read: the
	// subject's messages after it, as of that read.
	lastPending atomic.Uint64
	// inFlight counts the EVENTS messages of the batch or dead letter
	// being published: work pending even when nothing is left to read.
	inFlight atomic.Uint64
	// stopMu guards stopConsumer, which ends the running events consumer
	// with errStalled (nil between consumers).
	stopMu       sync.Mutex
	stopConsumer context.CancelCauseFunc

	// held is a cut batch whose publish was interrupted by shutdown.
	held *cutBatch
	// unpurged are the published batches whose EVENTS messages wait for
	// PurgeDelay, oldest first.
	unpurged []purgeMark
}

// cutBatch is a batch taken from the builder, on its way to BATCHES.
type cutBatch struct {
	b      *batch.Batch
	trace  batchTrace
	reason batch.CutReason
	// dedup are the batch's generation and the keys of its client ids,
	// remembered once it is published.
	dedup dedupCut
}

// Run resumes the shard and consumes it until ctx ends, re-creating the
// consumer when it stops; then it publishes what it holds.
func (l *shardLoop) Run(ctx context.Context) {
	next, ok := l.resume(ctx)
	if !ok {
		return
	}
	l.rebuildDedup(ctx)
	l.next.Store(next)
	defer l.finish(ctx)
	restarts := newRestarts(l.cfg.Retry)
	for {
		from := l.next.Load()
		err := l.consume(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errStalled) {
			// The watchdog has logged the stall; a new consumer cures one
			// whose server-side state was lost, at once.
			l.log.Warn("recreating the events consumer of a stalled shard", zap.Uint64("from", l.next.Load()))
			continue
		}
		wait := restarts.wait(l.next.Load() != from)
		l.log.Warn("events consumer stopped, recreating", zap.Uint64("from", l.next.Load()), zap.Duration("wait", wait), zap.Error(err))
		if !retry.Sleep(ctx, wait) {
			return
		}
	}
}

// backOff is the part of a retry.Config backoff the restarts use.
type backOff interface {
	NextBackOff() time.Duration
	Reset()
}

// restarts paces the re-creation of a shard's events consumer. The waits
// grow while the consumer keeps failing before it takes anything; once it
// has made progress (taken a message) the next failure is a new episode
// and waits the shortest again.
type restarts struct{ b backOff }

func newRestarts(c retry.Config) *restarts { return &restarts{b: c.NewBackOff()} }

// wait is the pause before the next consumer; progressed says whether the
// consumer that stopped took a message.
func (r *restarts) wait(progressed bool) time.Duration {
	if progressed {
		r.b.Reset()
	}
	return r.b.NextBackOff()
}

// resume finds where the shard's last published batch ends. Without one
// (none yet, or the sink consumed them all) it starts at the subject's
// first message: EVENTS is purged below every published batch, and the
// sink drops rows at or below its watermark. Each read is bounded by
// PublishTimeout and retried. It reports false when ctx ended first.
func (l *shardLoop) resume(ctx context.Context) (uint64, bool) {
	l.wd.Waiting("last batch of " + l.out + " in " + streams.Batches)
	var raw *jetstream.RawStreamMsg
	err := retry.Do(ctx, l.cfg.Retry, func() error {
		rctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
		defer cancel()
		var err error
		raw, err = l.batches.GetLastMsgForSubject(rctx, l.out)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return retry.Permanent(err)
		}
		return err
	}, func(attempt int, err error, wait time.Duration) {
		l.log.Warn("read last batch, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		l.log.Info("no batch yet, starting at the first event message")
		return 0, true
	case err != nil: // only the end of ctx stops the retries
		return 0, false
	case raw.Header.Get(streams.HeaderReplay) != "":
		// A replayed dead letter says nothing of where batching stopped.
		l.log.Info("last batch is a replay, starting at the first event message")
		return 0, true
	}
	last, err := strconv.ParseUint(raw.Header.Get(streams.HeaderLastSeq), 10, 64)
	if err != nil {
		l.log.Error("last batch has no valid "+streams.HeaderLastSeq+", starting at the first event message",
			zap.Uint64("batch_seq", raw.Sequence), zap.Error(err))
		return 0, true
	}
	l.log.Info("resuming after last batch", zap.String("batch_id", raw.Header.Get(streams.HeaderBatchID)))
	// A purge that was due before a crash is done in its time.
	l.schedulePurge(ctx, last)
	return last + 1, true
}

// waitingEvents is what a shard waiting for a message waits on.
var waitingEvents = "events from " + streams.Events

// eventsHeartbeat is the idle heartbeat of a shard's events consumer.
const eventsHeartbeat = time.Second

// errStalled ends the events consumer of a shard the watchdog found
// stalled.
var errStalled = errors.New("stalled")

// consume reads the shard from l.next with an ordered consumer and cuts
// batches until ctx ends (nil), the consumer fails (the error) or the
// poller stops it because the shard stalled (errStalled).
func (l *shardLoop) consume(ctx context.Context) error {
	// The poller's stop ends only the waits for messages: a publish under
	// way goes on with ctx, so the open and held batches stay whole.
	cctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	l.setStopConsumer(stop)
	defer l.setStopConsumer(nil)

	// The library's own recovery of a lost consumer (missed heartbeats, a
	// reconnect) runs inside Next, deaf to its context: one attempt only,
	// then Next fails and run recreates the consumer, paced by Retry and
	// ended by the shutdown.
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: []string{l.subject}, DeliverPolicy: jetstream.DeliverAllPolicy, MaxResetAttempts: 1}
	if next := l.next.Load(); next > 0 {
		cc.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cc.OptStartSeq = next
	}
	octx, cancel := context.WithTimeout(cctx, l.cfg.PublishTimeout)
	cons, err := l.js.OrderedConsumer(octx, streams.Events, cc)
	cancel()
	if err != nil {
		if cctx.Err() != nil {
			return context.Cause(cctx)
		}
		return fmt.Errorf("ordered consumer: %w", err)
	}
	// The server heartbeats an idle consumer every eventsHeartbeat; two
	// missed ones (its server died or stopped, the stream leader moved)
	// make the library recreate it. Its default, 5 s, left a shard idle
	// for 10 s after a leader change that took milliseconds.
	it, err := cons.Messages(jetstream.PullHeartbeat(eventsHeartbeat))
	if err != nil {
		return fmt.Errorf("messages: %w", err)
	}
	defer it.Stop()

	// wait ends at the next moment the loop must act without a message
	// (wakeAt), or when the shard's sink turns idle with a batch open. It
	// is made anew when that moment changes or the wait has ended; the
	// loop then looks again before it waits, so a notice of the sink that
	// came meanwhile is seen.
	wait, cancelWait := context.Context(cctx), context.CancelFunc(func() {})
	defer func() { cancelWait() }()
	var deadline time.Time
	fresh := false
	for {
		if ctx.Err() != nil {
			return nil
		}
		if cctx.Err() != nil {
			return context.Cause(cctx)
		}
		l.cutDue(ctx, time.Now())
		if d := l.wakeAt(); !fresh || !d.Equal(deadline) || wait.Err() != nil {
			cancelWait()
			deadline = d
			wait, cancelWait = l.waitUntil(cctx, d)
			fresh = true
			continue
		}
		l.wd.Waiting(waitingEvents)
		msg, err := it.Next(jetstream.NextContext(wait))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if cctx.Err() != nil {
				return context.Cause(cctx)
			}
			if wait.Err() != nil {
				continue // a deadline or the sink turned idle: the loop's top does what is due
			}
			return fmt.Errorf("next: %w", err)
		}
		l.wd.Progress()
		if err := l.take(ctx, msg); err != nil {
			return err
		}
	}
}

// cutDue cuts the open batch when it is due at now: by age (MaxAge), or
// early (its linger, MinAge while the sink keeps up: Builder.Paced) while
// the shard's sink has landed every batch before it; then it purges what
// is due.
func (l *shardLoop) cutDue(ctx context.Context, now time.Time) {
	if reason := l.builder.Expired(now); reason != "" {
		if l.sink != nil {
			l.paced(!l.sink.idle()) // aged while the sink was busy
		}
		l.cut(ctx, reason)
	} else if r := l.builder.Ripe(); !r.IsZero() && !now.Before(r) && l.sinkIdle() {
		// Ripe before the sink turned idle: the batch waited for the sink.
		l.paced(l.sink.idleSince().After(r))
		l.cut(ctx, batch.CutIdle)
	}
	l.purgeDue(ctx, now)
}

// paced tells the builder whether the batch being cut waited for the
// sink, which sets how long the next ones linger (Builder.Paced).
func (l *shardLoop) paced(waited bool) {
	l.builder.Paced(waited)
	l.m.linger.Set(l.builder.Linger().Seconds())
}

// sinkIdle reports whether the shard's sink has landed every batch this
// shard published; false when the batcher does not follow the sink.
func (l *shardLoop) sinkIdle() bool { return l.sink != nil && l.sink.idle() }

// waitUntil is the wait of the loop until d, which a landing notice
// ends early when the sink turns idle.
func (l *shardLoop) waitUntil(ctx context.Context, d time.Time) (context.Context, context.CancelFunc) {
	if l.sink == nil {
		return until(ctx, d)
	}
	return l.sink.waitUntil(ctx, d)
}

// setStopConsumer records how to stop the running events consumer.
func (l *shardLoop) setStopConsumer(stop context.CancelCauseFunc) {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	l.stopConsumer = stop
}

// until is ctx ending at d too; ctx itself when d is zero.
func until(ctx context.Context, d time.Time) (context.Context, context.CancelFunc) {
	if d.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, d)
}

// take adds one EVENTS message to the open batch, cutting before it when
// it does not fit and after it when the batch is full.
func (l *shardLoop) take(ctx context.Context, msg jetstream.Msg) error {
	meta, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("message metadata: %w", err)
	}
	seq := meta.Sequence.Stream
	l.next.Store(seq + 1)
	l.lastPending.Store(meta.NumPending)
	l.m.pending.Set(float64(meta.NumPending))
	events, err := event.Decode(msg.Data())
	if err != nil {
		l.deadLetter(ctx, msg, seq, err)
		return nil
	}
	events = l.erased.drop(ctx, events)
	if len(events) == 0 {
		return nil
	}
	size := 0
	for i := range events {
		size += events[i].Size()
	}
	if reason := l.builder.Admit(len(events), size); reason != "" {
		l.cut(ctx, reason)
	}
	// After the cut: a copy may be dropped for an original in the open
	// batch only when both go out in the same batch (dedup.go).
	events = l.dedup.dropDuplicates(events, time.Now())
	l.trace.add(trace.SpanContextFromContext(telemetry.Extract(context.Background(), msg.Headers())), l.cfg.MaxLinks)
	if reason := l.builder.Add(seq, events, time.Now()); reason != "" {
		l.cut(ctx, reason)
	}
	return nil
}

// cut publishes the open batch. When shutdown interrupts the publish the
// batch is held for finish, so it is never lost or split.
func (l *shardLoop) cut(ctx context.Context, reason batch.CutReason) {
	b := l.builder.Cut()
	if b == nil {
		return
	}
	l.project(ctx, b)
	c := &cutBatch{b: b, trace: l.trace, reason: reason, dedup: l.dedup.cutKeys()}
	l.trace = batchTrace{}
	if err := l.publish(ctx, c); err != nil {
		l.held = c
	}
}

// project fills b's typed columns, when they are on. It happens once per
// batch, before its first publish: a retry publishes the same bytes.
// Every batch is projected, since a batch cut while the lease looked lost
// may still be published when the lease is renewed, and must carry its
// columns (or list its keys in _unpromoted) like any other. Only a shard
// this instance holds proposes new keys: a proposal waiting on an
// unreachable NATS would hold up the shard's handover to its next owner,
// so without the lease new keys stay unpromoted (pending) in the batch.
func (l *shardLoop) project(ctx context.Context, b *batch.Batch) {
	if l.typer != nil {
		l.typer.project(ctx, b, l.holds())
	}
}

// finish publishes, at shutdown, the held batch and then the partial one,
// with a fresh context bounded by ShutdownTimeout. What it cannot publish
// stays in EVENTS and is read again by the next owner of the shard.
func (l *shardLoop) finish(parent context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), l.cfg.ShutdownTimeout)
	defer cancel()
	if l.held != nil {
		if err := l.publish(ctx, l.held); err != nil {
			l.unpublished(l.held.b.ID(), err)
			return
		}
		l.held = nil
	}
	if b := l.builder.Cut(); b != nil {
		l.project(ctx, b)
		c := &cutBatch{b: b, trace: l.trace, reason: batch.CutShutdown, dedup: l.dedup.cutKeys()}
		l.trace = batchTrace{}
		if err := l.publish(ctx, c); err != nil {
			l.unpublished(b.ID(), err)
		}
	}
}

// unpublished logs a batch finish could not publish.
func (l *shardLoop) unpublished(id string, err error) {
	if errors.Is(err, shard.ErrNotOwner) {
		l.log.Warn("batch not published: the shard's lease is lost; its next owner batches these events", zap.String("batch_id", id))
		return
	}
	l.log.Error("batch not published at shutdown; EVENTS keeps its events", zap.String("batch_id", id), zap.Error(err))
}
