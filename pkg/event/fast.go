package event

import (
	"bytes"
	"cmp"
	"encoding/json"
	"time"
	"unicode/utf8"
)

// The fast path parses a well-formed request in one pass over its bytes,
// with no reflection and no intermediate maps: at 100k events/s the
// general path (split with encoding/json, a map per event, a second pass
// for properties) took most of ingest's CPU. It accepts only what it
// fully understands and answers exactly as the general path would; on
// anything else (an error to report, escapes it would have to decode in
// an id, a duplicate key, deep nesting, text that is not valid Unicode) it
// gives up and ParseBytes runs the general path, which owns every error
// message. FuzzFastMatchesSlow holds the two to the same answers.

// maxFastDepth bounds nesting in properties on the fast path.
const maxFastDepth = 64

// parseFast returns the events of data, or false to defer to the general path.
func (p *Parser) parseFast(data []byte, format Format, tenant string, received time.Time, newID func(time.Time) string) ([]Event, bool) {
	var events []Event
	switch format {
	case FormatNDJSON:
		raws, err := splitNDJSON(data, p.Limits.MaxEvents)
		if err != nil || len(raws) == 0 {
			return nil, false
		}
		events = make([]Event, len(raws))
		for i, raw := range raws {
			if p.Limits.MaxEventBytes > 0 && len(raw) > p.Limits.MaxEventBytes {
				return nil, false
			}
			if !fastEvent(raw, &events[i], received) {
				return nil, false
			}
		}
	default:
		data = bytes.TrimSpace(data)
		if len(data) == 0 {
			return nil, false
		}
		if data[0] == '{' {
			if p.Limits.MaxEventBytes > 0 && len(data) > p.Limits.MaxEventBytes {
				return nil, false
			}
			events = make([]Event, 1)
			if !fastEvent(data, &events[0], received) {
				return nil, false
			}
		} else if events = p.fastArray(data, received); events == nil {
			return nil, false
		}
	}
	for i := range events {
		events[i].Tenant = tenant
		if events[i].EventID == "" {
			events[i].EventID, events[i].IDGenerated = newID(received), true
		}
	}
	return events, true
}

// fastArray reads a JSON array of one or more event objects within the
// limits in one pass: each object is parsed where the walk over the
// array finds it, its bytes read once (splitting the array first and
// parsing each span after read every byte twice, a third of ingest's CPU
// with twenty properties an event). nil means the general path decides.
func (p *Parser) fastArray(data []byte, received time.Time) []Event {
	s := scanner{b: data}
	var events []Event
	ok := s.objects(func() bool {
		if p.Limits.MaxEvents > 0 && len(events) >= p.Limits.MaxEvents {
			return false
		}
		start := s.i
		events = append(events, Event{})
		if !s.event(&events[len(events)-1], received) {
			return false
		}
		size := s.i - start
		if p.Limits.MaxEventBytes > 0 && size > p.Limits.MaxEventBytes {
			return false
		}
		if len(events) == 1 {
			// The events of one request are alike in size more often than
			// not: room for as many as the first one's size fits in the
			// body spares growing the slice by copies (at 500 events of
			// the bench's default properties, 121 KB allocated against
			// 210 KB by appends). A small first event gets more room than
			// the rest need, never more than Limits.MaxEvents (1,024 with
			// no limit; appends take it from there).
			n := min(len(data)/(size+1)+1, cmp.Or(p.Limits.MaxEvents, 1024))
			events = append(make([]Event, 0, n), events[0])
		}
		return true
	})
	// s.bad: some key or string (in properties too) is not valid text;
	// the general path names it.
	if !ok || s.bad {
		return nil
	}
	return events
}

// fastEvent fills ev from raw, one event object and nothing else, or
// returns false.
func fastEvent(raw []byte, ev *Event, received time.Time) bool {
	s := scanner{b: raw}
	if !s.event(ev, received) {
		return false
	}
	s.ws()
	return s.i == len(s.b) && !s.bad
}

// event fills ev from the event object at s, or returns false; s.bad is
// the caller's to check.
func (s *scanner) event(ev *Event, received time.Time) bool {
	*ev = Event{ReceivedAt: received, TS: received, Properties: "{}"}
	if !s.consume('{') {
		return false
	}
	var seen [5]bool
	haveUser, haveType := false, false
	s.ws()
	if s.consume('}') {
		return false // required fields missing: the general path says so
	}
	for {
		s.ws()
		key, esc, ok := s.str()
		if !ok || esc {
			return false
		}
		s.ws()
		if !s.consume(':') {
			return false
		}
		s.ws()
		field := -1
		switch string(key) {
		case fieldEventID:
			field = 0
		case fieldUserID:
			field = 1
		case fieldType:
			field = 2
		case fieldTS:
			field = 3
		case fieldProperties:
			field = 4
		}
		if field < 0 || seen[field] {
			return false
		}
		seen[field] = true
		isNull := s.literal("null")
		switch field {
		case 0: // event_id: optional, non-empty, at most MaxIDLen bytes
			if isNull {
				break
			}
			v, ok := s.text()
			if !ok || v == "" || len(v) > MaxIDLen {
				return false
			}
			ev.EventID = v
		case 1: // user_id: string or integer
			if isNull {
				return false
			}
			if s.peek() == '"' {
				v, ok := s.text()
				if !ok || v == "" || len(v) > MaxIDLen {
					return false
				}
				ev.UserID = v
			} else {
				v, ok := s.integer()
				if !ok {
					return false
				}
				ev.UserID = v
			}
			haveUser = true
		case 2: // type: non-empty, at most MaxTypeLen characters
			if isNull {
				return false
			}
			v, ok := s.text()
			if !ok || v == "" || utf8.RuneCountInString(v) > MaxTypeLen {
				return false
			}
			ev.Type = v
			haveType = true
		case 3: // ts: RFC 3339 within DateTime's range
			if isNull {
				break
			}
			v, ok := s.text()
			if !ok {
				return false
			}
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return false
			}
			if t = t.UTC(); t.Year() < 1970 || t.Year() > 2105 {
				return false
			}
			ev.TS = t.Truncate(time.Microsecond)
		case 4: // properties: a JSON object, kept compact
			if isNull {
				break
			}
			if s.peek() != '{' {
				return false
			}
			start := s.i
			spaced := false
			if !s.skipValue(0, &spaced) {
				return false
			}
			props := s.b[start:s.i]
			if spaced {
				var buf bytes.Buffer
				if json.Compact(&buf, props) != nil {
					return false
				}
				ev.Properties = buf.String()
			} else {
				ev.Properties = string(props)
			}
		}
		s.ws()
		if s.consume(',') {
			continue
		}
		if !s.consume('}') {
			return false
		}
		return haveUser && haveType
	}
}

// splitArray returns the spans of the objects of a JSON array, or nil when
// data is anything but an array of one or more objects within maxEvents.
func splitArray(data []byte, maxEvents int) [][]byte {
	s := scanner{b: data}
	var raws [][]byte
	ok := s.objects(func() bool {
		start := s.i
		if !s.skipValue(0, nil) || (maxEvents > 0 && len(raws) >= maxEvents) {
			return false
		}
		raws = append(raws, data[start:s.i])
		return true
	})
	if !ok {
		return nil
	}
	return raws
}

// objects reads a JSON array of one or more objects, the whole of s,
// calling each with s at every object: each reads past it, or returns
// false. False on anything else.
func (s *scanner) objects(each func() bool) bool {
	if !s.consume('[') {
		return false
	}
	for {
		s.ws()
		if s.peek() != '{' || !each() {
			return false
		}
		s.ws()
		if s.consume(',') {
			continue
		}
		if !s.consume(']') {
			return false
		}
		s.ws()
		return s.i == len(s.b)
	}
}
