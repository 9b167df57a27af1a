package partitioner

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/codes"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/streams"
)

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
	if tenant, ok := streams.ProducerTenant(in.msg.Subject()); ok {
		// A producer's message: its tenant sees why it went.
		s.host.Problems.Add(tenant, problems.ReasonMalformedMessage, "", problems.Sample{
			Detail: cause.Error(), Excerpt: problems.Excerpt(in.msg.Data()),
		})
	}
	s.m.deadLetters.Inc()
	s.m.messages.WithLabelValues(outcomeDeadLetter).Inc()
	s.settled()
}
