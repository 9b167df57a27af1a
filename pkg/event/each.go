package event

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/oklog/ulid/v2"
)

// tenantPattern is what a tenant name may look like: it becomes a NATS
// subject token and a ClickHouse value.
var tenantPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidTenant reports whether s may name a tenant: 1 to 64 letters,
// digits, '_' or '-'.
func ValidTenant(s string) bool { return tenantPattern.MatchString(s) }

// DetectFormat tells how a message without a content type holds its
// events: a JSON array, one JSON object, or NDJSON (an object per line).
// It returns false when the first non-space byte is neither '[' nor '{':
// the message is not JSON at all.
func DetectFormat(data []byte) (Format, bool) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return 0, false
	}
	switch data[0] {
	case '[':
		return FormatJSON, true
	case '{':
		// One object, even pretty-printed over many lines, is valid JSON
		// as a whole; several objects are not, so they are NDJSON.
		if json.Valid(data) {
			return FormatJSON, true
		}
		return FormatNDJSON, true
	}
	return 0, false
}

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
			ev.EventID = id(i)
		}
		it.Event = ev
	}
	return items, nil
}

// DerivedID is a ULID made only from its inputs: the millisecond of t and
// a hash of seq and index. A message redelivered from a stream (same
// timestamp, sequence and positions) yields the same ids every time.
func DerivedID(t time.Time, seq uint64, index int) string {
	var key [16]byte
	binary.BigEndian.PutUint64(key[:8], seq)
	binary.BigEndian.PutUint64(key[8:], uint64(index))
	var entropy [16]byte
	binary.BigEndian.PutUint64(entropy[:8], xxhash.Sum64(key[:]))
	binary.BigEndian.PutUint64(entropy[8:], xxhash.Sum64(append(key[:], 0x5a)))
	var id ulid.ULID
	_ = id.SetTime(ulid.Timestamp(t)) // fails only past the year 10889
	copy(id[6:], entropy[:10])
	return id.String()
}
