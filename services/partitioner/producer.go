package partitioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// parseProducerMessage validates the JSON message a NATS or MQTT producer
// published to surge.in.<tenant>.<anything> and returns its valid events. Each
// invalid event is dead-lettered on its own (asynchronously: its PubAck
// joins the message's before the message is acked), so the valid events
// beside it still flow. An error means the message as a whole is
// unusable and is dead-lettered by the caller.
//
// The tenant comes from the subject the producer's credentials allow,
// never from the payload. What the parser would make up is derived from
// the INGEST message instead, so a redelivery rebuilds identical events:
// received_at is the message's stream timestamp and an absent event_id is
// a ULID of that timestamp and a hash of stream sequence and position.
func (w *worker) parseProducerMessage(ctx context.Context, in *input, tenant string, stored time.Time) ([]event.Event, error) {
	if !event.ValidTenant(tenant) {
		return nil, fmt.Errorf("tenant %q in subject must be 1 to 64 letters, digits, '_' or '-'", tenant)
	}
	format, ok := event.DetectFormat(in.msg.Data())
	if !ok {
		return nil, errors.New("message is not JSON: it must hold an event object, a JSON array of events or NDJSON")
	}
	items, err := w.s.parser.ParseEach(in.msg.Data(), format, tenant, stored, func(i int) string {
		return event.DerivedID(stored, in.seq, i)
	})
	if err != nil {
		var ve *event.ValidationError
		if errors.As(err, &ve) && len(ve.Problems) > 0 {
			return nil, errors.New(event.Problems(ve.Problems).String())
		}
		return nil, err
	}
	events := make([]event.Event, 0, len(items))
	for i := range items {
		it := &items[i]
		if len(it.Problems) == 0 {
			events = append(events, it.Event)
			continue
		}
		if err := w.deadLetterEvent(ctx, in, tenant, it); err != nil {
			return nil, err // not a property of the message: in.err is set
		}
	}
	return w.s.dropErased(tenant, events), nil
}

// deadLetterEvent publishes one invalid producer event to DEAD_LETTER,
// body = the event as sent, with its problems in the headers. The message
// id makes a redelivery's dead letter a duplicate.
func (w *worker) deadLetterEvent(ctx context.Context, in *input, tenant string, it *event.Item) error {
	problems, _ := json.Marshal(it.Problems) // a slice of plain structs cannot fail
	m := streams.DeadLetterMsg{
		Service:   "partitioner",
		Subject:   streams.InvalidSubject(tenant),
		Data:      it.Raw,
		Reason:    event.Problems(it.Problems).String(),
		Source:    in.msg.Subject(),
		SourceSeq: in.seq,
		Index:     it.Index,
		HasIndex:  true,
		Tenant:    tenant,
		Problems:  string(problems),
	}.Msg()
	telemetry.Inject(ctx, m.Header)
	f, err := w.publishAsync(m)
	if err != nil {
		in.err = err
		return err
	}
	in.deadLetters = append(in.deadLetters, f)
	in.invalid++
	w.s.recordInvalid(tenant, it)
	return nil
}

// recordInvalid records the problems of an invalid producer event for its
// tenant (GET /v1/problems). A message naked after this, and redelivered,
// records them again: problems are counted at least once.
func (s *Service) recordInvalid(tenant string, it *event.Item) {
	id := problems.ID(it.Raw, "event_id")
	for _, p := range it.Problems {
		reason, field, sample := problems.FromEvent(p, id, it.Raw)
		s.host.Problems.Add(tenant, reason, field, sample)
	}
}
