package batcher

import (
	"context"
	"errors"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
)

// deadLetter publishes a corrupt EVENTS message to DEAD_LETTER; it is then
// skipped. The attempt outlives shutdown by at most ShutdownTimeout. Its
// id, batcher:<events subject>:<seq>, makes a re-read of the same message
// (after a restart) a duplicate DEAD_LETTER drops.
func (l *shardLoop) deadLetter(ctx context.Context, msg jetstream.Msg, seq uint64, cause error) {
	dl := streams.DeadLetterMsg{
		Service:   "batcher",
		Subject:   streams.DeadLetterSubject("batcher", l.k),
		Data:      msg.Data(),
		Reason:    cause.Error(),
		Source:    msg.Subject(),
		SourceSeq: seq,
	}.Msg()
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.ShutdownTimeout)
	defer cancel()
	l.inFlight.Store(1)
	defer l.inFlight.Store(0)
	l.wd.Waiting("PubAck of dead letter of " + msg.Subject() + ":" + strconv.FormatUint(seq, 10))
	if err := l.publishRetry(dctx, dl, l.log); err != nil {
		if errors.Is(err, shard.ErrNotOwner) {
			l.log.Warn("dead letter not published: the shard's lease is lost; its next owner reads the message again", zap.Uint64("seq", seq))
			return
		}
		l.log.Error("dead letter not published; the corrupt message is skipped", zap.Uint64("seq", seq), zap.Error(err))
		return
	}
	l.wd.Progress()
	l.m.deadLetters.Inc()
	l.log.Warn("dead-lettered corrupt message", zap.Uint64("seq", seq), zap.Error(cause))
}
