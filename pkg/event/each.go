package event

import (
	"bytes"
	"fmt"
	"time"
)

// Item is one event of a message read by ParseEach: valid when Problems
// is empty, else Event is the zero value and Raw holds what was sent.
type Item struct {
	// Index is the event's position in the message, from 0.
	Index int
	// Event is the validated event when Problems is empty.
	Event Event
	// Problems say why the event is invalid; empty when it is valid.
	Problems []Problem
	// Raw is the event as sent; it refers into the parsed data.
	Raw []byte
}

// ParseEach reads every event of data in the given format for tenant and
// judges each on its own, with the rules and limits of ParseBytes: an
// invalid event does not spoil the valid ones beside it. Received is the
// receive time of every event (truncated to microseconds); id makes the
// event_id of an event that carries none from its index, so the caller
// decides whether ids are random or derived from the message.
//
// The error is for the message as a whole: a *ValidationError when it
// cannot be split into events (malformed array, not JSON),
// ErrTooManyEvents or ErrEmpty.
func (p *Parser) ParseEach(data []byte, format Format, tenant string, received time.Time, id func(index int) string) ([]Item, error) {
	received = received.UTC().Truncate(time.Microsecond)
	var raws [][]byte
	if trimmed := bytes.TrimSpace(data); format == FormatJSON && len(trimmed) > 0 && trimmed[0] == '[' {
		raws = splitArray(trimmed, p.Limits.MaxEvents) // nil on anything unusual
	}
	if raws == nil {
		var err error
		if raws, err = splitBody(data, format, p.Limits.MaxEvents); err != nil {
			return nil, err
		}
	}
	if len(raws) == 0 {
		return nil, ErrEmpty
	}
	items := make([]Item, len(raws))
	for i, raw := range raws {
		it := &items[i]
		it.Index, it.Raw = i, raw
		report := func(i int, field, reason string) {
			if len(it.Problems) < maxProblems {
				it.Problems = append(it.Problems, Problem{Index: i, Field: field, Reason: reason})
			}
		}
		if limit := p.Limits.MaxEventBytes; limit > 0 && len(raw) > limit {
			report(i, "", fmt.Sprintf("event is %d bytes, limit is %d", len(raw), limit))
			continue
		}
		// The fast path answers as parseOne would, or defers to it.
		var ev Event
		if !fastEvent(raw, &ev, received) {
			var ok bool
			if ev, ok = parseOne(raw, i, received, report); !ok {
				continue
			}
		}
		ev.Tenant = tenant
		if ev.EventID == "" {
			ev.EventID, ev.IDGenerated = id(i), true
		}
		it.Event = ev
	}
	return items, nil
}
