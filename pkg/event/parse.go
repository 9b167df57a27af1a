package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
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

// Problem says what is wrong with one event: Index is its position in the
// request, Field the JSON field (empty for the whole event).
type Problem struct {
	Index  int    `json:"index"`
	Field  string `json:"field,omitempty"`
	Reason string `json:"reason"`
}

// Problems are what is wrong with a request or one of its items, in order.
type Problems []Problem

// String says in one line what is wrong, each problem with its event's
// index where known (>= 0) and its field: "event 1: type: required; ...".
func (ps Problems) String() string { return ps.format(true) }

// Reasons is String without the events' indexes, for one item whose index
// is said elsewhere: "type: required; ...".
func (ps Problems) Reasons() string { return ps.format(false) }

func (ps Problems) format(index bool) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString("; ")
		}
		if index && p.Index >= 0 {
			b.WriteString("event " + strconv.Itoa(p.Index) + ": ")
		}
		if p.Field != "" {
			b.WriteString(p.Field + ": ")
		}
		b.WriteString(p.Reason)
	}
	return b.String()
}

// ValidationError lists every problem found in a request.
type ValidationError struct {
	Problems []Problem
	// Events is how many events the request held, when that is known
	// (0 when the body could not be split into events).
	Events int
	// Err classifies the problems where a caller must tell them apart:
	// ErrEventTooLarge when events exceed Limits.MaxEventBytes, else nil.
	Err error
}

// Unwrap returns Err, so errors.Is(err, ErrEventTooLarge) works.
func (e *ValidationError) Unwrap() error { return e.Err }

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

// ErrEventTooLarge is wrapped by a *ValidationError whose events exceed
// Limits.MaxEventBytes: the request is too large rather than malformed.
var ErrEventTooLarge = errors.New("event too large")

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

// Wire field names. Matching is exact: encoding/json would otherwise match
// struct fields case-insensitively and accept "USER_ID" or a second "Type".
const (
	fieldEventID    = "event_id"
	fieldUserID     = "user_id"
	fieldType       = "type"
	fieldTS         = "ts"
	fieldProperties = "properties"
)

// Parser validates request bodies into events. It is safe for concurrent use.
type Parser struct {
	Limits Limits
	// Now returns the receive time; time.Now when nil.
	Now func() time.Time
	// NewID returns a fresh event id; a monotonic-entropy ULID when nil.
	NewID func(t time.Time) string
}

// Parse reads every event of body in the given format for tenant. It
// returns all events or an error: a *ValidationError listing the problems
// (wrapping ErrEventTooLarge when events exceed the size limit),
// ErrTooManyEvents, ErrEmpty, or a read error from body (for example a
// size limit of the reader) wrapped.
func (p *Parser) Parse(body io.Reader, format Format, tenant string) ([]Event, error) {
	data, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return p.ParseBytes(data, format, tenant)
}

// ParseBytes is Parse for a body already in memory. Events do not keep
// references to data.
func (p *Parser) ParseBytes(data []byte, format Format, tenant string) ([]Event, error) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	// Microseconds are what the binary form keeps; truncating here makes
	// an event decode to exactly what was parsed.
	received := now().UTC().Truncate(time.Microsecond)
	newID := p.NewID
	if newID == nil {
		newID = func(t time.Time) string { return ulid.MustNew(ulid.Timestamp(t), ulid.DefaultEntropy()).String() }
	}
	if events, ok := p.parseFast(data, format, tenant, received, newID); ok {
		return events, nil
	}
	return p.parseGeneral(data, format, tenant, received, newID)
}

// parseGeneral is the path that handles every input and names every
// problem; well-formed requests take parseFast.
func (p *Parser) parseGeneral(data []byte, format Format, tenant string, received time.Time, newID func(time.Time) string) ([]Event, error) {
	raws, err := splitBody(data, format, p.Limits.MaxEvents)
	if err != nil {
		return nil, err
	}
	if len(raws) == 0 {
		return nil, ErrEmpty
	}

	var problems []Problem
	report := func(i int, field, reason string) {
		if len(problems) < maxProblems {
			problems = append(problems, Problem{Index: i, Field: field, Reason: reason})
		}
	}
	// Size first: an oversized event makes the request too large (413)
	// whatever else is wrong with it.
	if limit := p.Limits.MaxEventBytes; limit > 0 {
		for i, raw := range raws {
			if len(raw) > limit {
				report(i, "", fmt.Sprintf("event is %d bytes, limit is %d", len(raw), limit))
			}
		}
		if len(problems) > 0 {
			return nil, &ValidationError{Problems: problems, Events: len(raws), Err: ErrEventTooLarge}
		}
	}

	events := make([]Event, 0, len(raws))
	for i, raw := range raws {
		ev, ok := parseOne(raw, i, received, report)
		if !ok {
			continue
		}
		ev.Tenant = tenant
		if ev.EventID == "" {
			ev.EventID, ev.IDGenerated = newID(received), true
		}
		events = append(events, ev)
	}
	if len(problems) > 0 {
		return nil, &ValidationError{Problems: problems, Events: len(raws)}
	}
	return events, nil
}

// splitBody cuts body into one raw JSON value per event.
func splitBody(data []byte, format Format, maxEvents int) ([][]byte, error) {
	if format == FormatNDJSON {
		return splitNDJSON(data, maxEvents)
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, ErrEmpty
	}
	if data[0] == '{' {
		// parseOne rejects anything after the object.
		return [][]byte{data}, nil
	}
	if data[0] != '[' {
		return nil, &ValidationError{Problems: []Problem{{Index: -1, Reason: "body must be a JSON array of event objects"}}}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if _, err := dec.Token(); err != nil { // the opening bracket
		return nil, syntaxProblem(-1, err)
	}
	var raws [][]byte
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
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &ValidationError{Problems: []Problem{{Index: -1, Reason: "unexpected data after the JSON array"}}}
	}
	return raws, nil
}

func splitNDJSON(data []byte, maxEvents int) ([][]byte, error) {
	var raws [][]byte
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if maxEvents > 0 && len(raws) >= maxEvents {
			return nil, fmt.Errorf("%w: limit is %d", ErrTooManyEvents, maxEvents)
		}
		raws = append(raws, line)
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

func parseOne(raw []byte, i int, received time.Time, report func(int, string, string)) (Event, bool) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			report(i, "", "event must be a JSON object")
		} else {
			report(i, "", "malformed JSON: "+err.Error())
		}
		return Event{}, false
	}
	if fields == nil { // the literal null
		report(i, "", "event must be a JSON object")
		return Event{}, false
	}
	ok := true
	fail := func(field, reason string) { report(i, field, reason); ok = false }
	// Invalid text in a field is its problem, before any other.
	invalid := invalidText(raw)
	validText := func(name string) bool {
		p, bad := invalid[name]
		if bad {
			fail(p.field, p.reason)
		}
		return !bad
	}

	var unknown []string
	for name := range fields {
		switch name {
		case fieldEventID, fieldUserID, fieldType, fieldTS, fieldProperties:
		default:
			unknown = append(unknown, name)
		}
	}
	slices.Sort(unknown) // a stable answer for the same request
	for _, name := range unknown {
		if p := invalid[name]; p.key {
			fail(p.field, p.reason)
		} else {
			fail(name, "unknown field")
		}
	}

	ev := Event{ReceivedAt: received, TS: received, Properties: "{}"}

	userID := fields[fieldUserID]
	switch {
	case isAbsent(userID):
		fail(fieldUserID, "required")
	case !validText(fieldUserID): // reported
	case userID[0] == '"':
		var s string
		if err := json.Unmarshal(userID, &s); err != nil || s == "" {
			fail(fieldUserID, "must be a non-empty string or an integer")
		} else if len(s) > MaxIDLen {
			fail(fieldUserID, fmt.Sprintf("longer than %d bytes", MaxIDLen))
		} else {
			ev.UserID = s
		}
	default:
		if n, err := strconv.ParseInt(string(userID), 10, 64); err == nil {
			ev.UserID = strconv.FormatInt(n, 10)
		} else if isDigits(userID) && len(userID) <= MaxIDLen {
			// Integers past int64 (unsigned 64-bit ids, say) keep their
			// digits; JSON forbids leading zeros, so the text is canonical.
			ev.UserID = string(userID)
		} else {
			fail(fieldUserID, "must be a non-empty string or an integer")
		}
	}

	if typ := fields[fieldType]; isAbsent(typ) {
		fail(fieldType, "required")
	} else if validText(fieldType) {
		s, err := unquote(typ)
		switch {
		case err != nil || s == "":
			fail(fieldType, "must be a non-empty string")
		case utf8.RuneCountInString(s) > MaxTypeLen:
			fail(fieldType, fmt.Sprintf("longer than %d characters", MaxTypeLen))
		default:
			ev.Type = s
		}
	}

	if ts := fields[fieldTS]; !isAbsent(ts) && validText(fieldTS) {
		s, err := unquote(ts)
		if err != nil {
			fail(fieldTS, "must be an RFC 3339 string")
		} else if t, err := time.Parse(time.RFC3339Nano, s); err != nil {
			fail(fieldTS, "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")
		} else if t = t.UTC(); t.Year() < 1970 || t.Year() > 2105 {
			// ClickHouse DateTime covers 1970 to 2105, in UTC.
			fail(fieldTS, "must lie between 1970 and 2105")
		} else {
			ev.TS = t.Truncate(time.Microsecond)
		}
	}

	if id := fields[fieldEventID]; !isAbsent(id) && validText(fieldEventID) {
		s, err := unquote(id)
		switch {
		case err != nil || s == "":
			fail(fieldEventID, "must be a non-empty string")
		case len(s) > MaxIDLen:
			fail(fieldEventID, fmt.Sprintf("longer than %d bytes", MaxIDLen))
		default:
			ev.EventID = s
		}
	}

	if props := fields[fieldProperties]; !isAbsent(props) && validText(fieldProperties) {
		if props[0] != '{' {
			fail(fieldProperties, "must be a JSON object")
		} else {
			var buf bytes.Buffer
			if err := json.Compact(&buf, props); err != nil {
				fail(fieldProperties, "must be a JSON object")
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

func isDigits(raw []byte) bool {
	for _, c := range raw {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(raw) > 0
}

func unquote(raw json.RawMessage) (string, error) {
	if raw[0] != '"' {
		return "", errors.New("not a string")
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}
