package sink

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// deadLetter publishes the original bytes of msg to DEAD_LETTER, waits for
// the PubAck, then terminates msg. Publishing is retried like an insert:
// the end of ctx (shutdown) cuts the waits between attempts, never an
// attempt, and releases msg with a Nak. Each attempt, and the Term, first
// checks the shard's lease: a shard lost meanwhile publishes nothing more
// and naks msg for the next owner (a dead letter that raced it has the same
// id as the next owner's and is dropped by JetStream). ctx carries the
// batch's trace.
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
		if !l.holds() {
			return retry.Permanent(shard.ErrNotOwner)
		}
		pctx, cancel := context.WithTimeout(work, natsTimeout)
		defer cancel()
		_, err := l.js.PublishMsg(pctx, out)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		l.m.retries.Inc()
		log.Warn("publish dead letter failed, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err == nil && !l.holds() {
		err = shard.ErrNotOwner
	}
	l.release()
	if errors.Is(err, shard.ErrNotOwner) {
		log.Warn("shard lease lost while dead-lettering the batch; releasing it to the next owner")
		_ = msg.Nak()
		return
	}
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
