package event

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
)

// MaxTypeLen is the longest accepted event type, in characters.
const MaxTypeLen = 128

// MaxIDLen is the longest accepted event_id or user_id, in bytes.
const MaxIDLen = 256

// Format is the body encoding of a request.
type Format int

const (
	// FormatJSON is a JSON array of event objects (a single object is accepted too).
	FormatJSON Format = iota
	// FormatNDJSON is one event object per line.
	FormatNDJSON
)

// Problem says what is wrong with one event: Index is its position in the
// request, Field the JSON field (empty for the whole event).
type Problem struct {
	Index  int    `json:"index"`
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

// ValidationError lists every problem found in a request.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	if len(e.Problems) == 0 {
		return "invalid events"
	}
	p := e.Problems[0]
	return fmt.Sprintf("%d invalid event field(s), first: event %d %s: %s", len(e.Problems), p.Index, p.Field, p.Reason)
}

// ErrTooManyEvents reports a request with more events than Limits.MaxEvents.
var ErrTooManyEvents = errors.New("too many events in request")

// ErrEmpty reports a request without events.
var ErrEmpty = errors.New("request holds no events")

// Limits bound what one request may carry.
type Limits struct {
	// MaxEvents is the most events per request.
	MaxEvents int
	// MaxEventBytes is the most bytes one encoded event may take.
	MaxEventBytes int
}

// maxProblems caps the problems reported for one request, so a huge bad
// request does not produce a huge answer.
const maxProblems = 100

type wireEvent struct {
	EventID    json.RawMessage `json:"event_id"`
	UserID     json.RawMessage `json:"user_id"`
	Type       json.RawMessage `json:"type"`
	TS         json.RawMessage `json:"ts"`
	Properties json.RawMessage `json:"properties"`
}

// Parser validates request bodies into events. It is safe for concurrent use.
type Parser struct {
	Limits Limits
	// Now returns the receive time; time.Now when nil.
	Now func() time.Time
	// NewID returns a fresh event id; a monotonic-entropy ULID when nil.
	NewID func(t time.Time) string
}

// Parse reads every event of body in the given format for tenant. It
// returns all events or an error: a *ValidationError listing the problems,
// ErrTooManyEvents, ErrEmpty, or a read error from body (for example a
// size limit of the reader) wrapped.
func (p *Parser) Parse(body io.Reader, format Format, tenant string) ([]Event, error) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	received := now().UTC()
	newID := p.NewID
	if newID == nil {
		newID = func(t time.Time) string { return ulid.MustNew(ulid.Timestamp(t), ulid.DefaultEntropy()).String() }
	}

	raws, err := splitBody(body, format, p.Limits.MaxEvents)
	if err != nil {
		return nil, err
	}
	if len(raws) == 0 {
		return nil, ErrEmpty
	}

	events := make([]Event, 0, len(raws))
	var problems []Problem
	report := func(i int, field, reason string) {
		if len(problems) < maxProblems {
			problems = append(problems, Problem{Index: i, Field: field, Reason: reason})
		}
	}
	for i, raw := range raws {
		if p.Limits.MaxEventBytes > 0 && len(raw) > p.Limits.MaxEventBytes {
			report(i, "", fmt.Sprintf("event is %d bytes, limit is %d", len(raw), p.Limits.MaxEventBytes))
			continue
		}
		ev, ok := parseOne(raw, i, received, report)
		if !ok {
			continue
		}
		ev.Tenant = tenant
		if ev.EventID == "" {
			ev.EventID = newID(received)
		}
		events = append(events, ev)
	}
	if len(problems) > 0 {
		return nil, &ValidationError{Problems: problems}
	}
	return events, nil
}

// splitBody cuts body into one raw JSON value per event.
func splitBody(body io.Reader, format Format, maxEvents int) ([]json.RawMessage, error) {
	if format == FormatNDJSON {
		return splitNDJSON(body, maxEvents)
	}
	data, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, ErrEmpty
	}
	if data[0] == '{' {
		return []json.RawMessage{data}, nil
	}
	if data[0] != '[' {
		return nil, &ValidationError{Problems: []Problem{{Index: -1, Reason: "body must be a JSON array of event objects"}}}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // the opening bracket
		return nil, syntaxProblem(-1, err)
	}
	var raws []json.RawMessage
	for dec.More() {
		if maxEvents > 0 && len(raws) >= maxEvents {
			return nil, fmt.Errorf("%w: limit is %d", ErrTooManyEvents, maxEvents)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, syntaxProblem(len(raws), err)
		}
		raws = append(raws, raw)
	}
	if _, err := dec.Token(); err != nil { // the closing bracket
		return nil, syntaxProblem(len(raws), err)
	}
	if dec.More() {
		return nil, &ValidationError{Problems: []Problem{{Index: -1, Reason: "unexpected data after the JSON array"}}}
	}
	return raws, nil
}

func splitNDJSON(body io.Reader, maxEvents int) ([]json.RawMessage, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	var raws []json.RawMessage
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if maxEvents > 0 && len(raws) >= maxEvents {
			return nil, fmt.Errorf("%w: limit is %d", ErrTooManyEvents, maxEvents)
		}
		raws = append(raws, json.RawMessage(bytes.Clone(line)))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return raws, nil
}

func syntaxProblem(index int, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return &ValidationError{Problems: []Problem{{Index: index, Reason: "malformed JSON: " + err.Error()}}}
	}
	return fmt.Errorf("read body: %w", err)
}

func parseOne(raw json.RawMessage, i int, received time.Time, report func(int, string, string)) (Event, bool) {
	var w wireEvent
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te):
			report(i, "", "event must be a JSON object")
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			report(i, field, "unknown field")
		default:
			report(i, "", "malformed JSON: "+err.Error())
		}
		return Event{}, false
	}
	ok := true
	fail := func(field, reason string) { report(i, field, reason); ok = false }

	ev := Event{ReceivedAt: received, TS: received, Properties: "{}"}

	switch {
	case isAbsent(w.UserID):
		fail("user_id", "required")
	case w.UserID[0] == '"':
		var s string
		if err := json.Unmarshal(w.UserID, &s); err != nil || s == "" {
			fail("user_id", "must be a non-empty string or an integer")
		} else if len(s) > MaxIDLen {
			fail("user_id", fmt.Sprintf("longer than %d bytes", MaxIDLen))
		} else {
			ev.UserID = s
		}
	default:
		n, err := strconv.ParseInt(string(w.UserID), 10, 64)
		if err != nil {
			fail("user_id", "must be a non-empty string or an integer")
		} else {
			ev.UserID = strconv.FormatInt(n, 10)
		}
	}

	if isAbsent(w.Type) {
		fail("type", "required")
	} else if s, err := unquote(w.Type); err != nil || s == "" {
		fail("type", "must be a non-empty string")
	} else if utf8.RuneCountInString(s) > MaxTypeLen {
		fail("type", fmt.Sprintf("longer than %d characters", MaxTypeLen))
	} else {
		ev.Type = s
	}

	if !isAbsent(w.TS) {
		s, err := unquote(w.TS)
		if err != nil {
			fail("ts", "must be an RFC 3339 string")
		} else if t, err := time.Parse(time.RFC3339Nano, s); err != nil {
			fail("ts", "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")
		} else if t.Year() < 1970 || t.Year() > 2105 {
			// ClickHouse DateTime covers 1970 to 2105.
			fail("ts", "must lie between 1970 and 2105")
		} else {
			ev.TS = t.UTC()
		}
	}

	if !isAbsent(w.EventID) {
		s, err := unquote(w.EventID)
		switch {
		case err != nil || s == "":
			fail("event_id", "must be a non-empty string")
		case len(s) > MaxIDLen:
			fail("event_id", fmt.Sprintf("longer than %d bytes", MaxIDLen))
		default:
			ev.EventID = s
		}
	}

	if !isAbsent(w.Properties) {
		if w.Properties[0] != '{' {
			fail("properties", "must be a JSON object")
		} else {
			var buf bytes.Buffer
			if err := json.Compact(&buf, w.Properties); err != nil {
				fail("properties", "must be a JSON object")
			} else {
				ev.Properties = buf.String()
			}
		}
	}
	return ev, ok
}

func isAbsent(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

func unquote(raw json.RawMessage) (string, error) {
	if raw[0] != '"' {
		return "", errors.New("not a string")
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}
