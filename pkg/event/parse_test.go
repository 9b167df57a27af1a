package event_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
)

var received = time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)

// receivedMicro is received as the parser keeps it: in microseconds.
var receivedMicro = received.Truncate(time.Microsecond)

// newParser returns a parser with a fixed clock and sequential ids.
func newParser(limits event.Limits) *event.Parser {
	n := 0
	return &event.Parser{
		Limits: limits,
		Now:    func() time.Time { return received },
		NewID: func(time.Time) string {
			n++
			return "gen-" + strconv.Itoa(n)
		},
	}
}

// ev is an expected event; an id the test parser made up ("gen-") is
// marked generated.
func ev(id, user, typ string, ts time.Time, props string) event.Event {
	return event.Event{EventID: id, IDGenerated: strings.HasPrefix(id, "gen-"), Tenant: "acme", UserID: user, Type: typ, TS: ts, ReceivedAt: receivedMicro, Properties: props}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name   string
		format event.Format
		body   string
		want   []event.Event
	}{
		{
			name:   "array with every field",
			format: event.FormatJSON,
			body:   `[{"event_id":"e1","user_id":"u1","type":"click","ts":"2024-04-30T10:00:00Z","properties":{ "a" : 1, "b":[true, null] }}]`,
			want:   []event.Event{ev("e1", "u1", "click", time.Date(2024, 4, 30, 10, 0, 0, 0, time.UTC), `{"a":1,"b":[true,null]}`)},
		},
		{
			name:   "single object",
			format: event.FormatJSON,
			body:   ` {"user_id":"u1","type":"view"} `,
			want:   []event.Event{ev("gen-1", "u1", "view", receivedMicro, "{}")},
		},
		{
			name:   "integer user_id is normalised to its decimal text",
			format: event.FormatJSON,
			body:   `[{"user_id":42,"type":"a"},{"user_id":-7,"type":"a"},{"user_id":18446744073709551615,"type":"a"}]`,
			want: []event.Event{
				ev("gen-1", "42", "a", receivedMicro, "{}"),
				ev("gen-2", "-7", "a", receivedMicro, "{}"),
				ev("gen-3", "18446744073709551615", "a", receivedMicro, "{}"),
			},
		},
		{
			name:   "null optional fields take their defaults",
			format: event.FormatJSON,
			body:   `[{"user_id":"u","type":"a","ts":null,"event_id":null,"properties":null}]`,
			want:   []event.Event{ev("gen-1", "u", "a", receivedMicro, "{}")},
		},
		{
			name:   "ts with offset and nanoseconds becomes UTC microseconds",
			format: event.FormatJSON,
			body:   `{"user_id":"u","type":"a","ts":"2024-04-30T12:00:00.123456789+02:00"}`,
			want:   []event.Event{ev("gen-1", "u", "a", time.Date(2024, 4, 30, 10, 0, 0, 123456000, time.UTC), "{}")},
		},
		{
			name:   "ndjson with blank lines and CRLF",
			format: event.FormatNDJSON,
			body:   "{\"user_id\":\"u1\",\"type\":\"a\"}\r\n\n  \n{\"user_id\":2,\"type\":\"b\",\"event_id\":\"x\"}",
			want: []event.Event{
				ev("gen-1", "u1", "a", receivedMicro, "{}"),
				ev("x", "2", "b", receivedMicro, "{}"),
			},
		},
		{
			name:   "type of exactly 128 characters, counted in runes",
			format: event.FormatJSON,
			body:   `{"user_id":"u","type":"` + strings.Repeat("é", 128) + `"}`,
			want:   []event.Event{ev("gen-1", "u", strings.Repeat("é", 128), receivedMicro, "{}")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := newParser(event.Limits{}).Parse(strings.NewReader(tt.body), tt.format, "acme")
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseDefaultIDsAreULIDs(t *testing.T) {
	p := &event.Parser{}
	got, err := p.ParseBytes([]byte(`[{"user_id":"u","type":"a"},{"user_id":"u","type":"a"}]`), event.FormatJSON, "t")
	require.NoError(t, err)
	require.Len(t, got, 2)
	for _, e := range got {
		require.Len(t, e.EventID, 26)
		require.Equal(t, e.ReceivedAt, e.TS)
		require.Equal(t, e.ReceivedAt, e.ReceivedAt.Truncate(time.Microsecond))
	}
	require.NotEqual(t, got[0].EventID, got[1].EventID)
	require.Less(t, got[0].EventID, got[1].EventID, "monotonic within a request")
}

func TestParseProblems(t *testing.T) {
	long := strings.Repeat("x", event.MaxIDLen+1)
	tests := []struct {
		name   string
		format event.Format
		body   string
		want   []event.Problem
	}{
		{"user_id missing", event.FormatJSON, `[{"type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "required"}}},
		{"user_id null", event.FormatJSON, `[{"user_id":null,"type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "required"}}},
		{"user_id empty", event.FormatJSON, `[{"user_id":"","type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "must be a non-empty string or an integer"}}},
		{"user_id float", event.FormatJSON, `[{"user_id":1.5,"type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "must be a non-empty string or an integer"}}},
		{"user_id exponent", event.FormatJSON, `[{"user_id":1e3,"type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "must be a non-empty string or an integer"}}},
		{"user_id bool", event.FormatJSON, `[{"user_id":true,"type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "must be a non-empty string or an integer"}}},
		{"user_id object", event.FormatJSON, `[{"user_id":{},"type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "must be a non-empty string or an integer"}}},
		{"user_id too long", event.FormatJSON, `[{"user_id":"` + long + `","type":"a"}]`, []event.Problem{{Index: 0, Field: "user_id", Reason: "longer than 256 bytes"}}},
		{"type missing", event.FormatJSON, `[{"user_id":"u"}]`, []event.Problem{{Index: 0, Field: "type", Reason: "required"}}},
		{"type number", event.FormatJSON, `[{"user_id":"u","type":3}]`, []event.Problem{{Index: 0, Field: "type", Reason: "must be a non-empty string"}}},
		{"type empty", event.FormatJSON, `[{"user_id":"u","type":""}]`, []event.Problem{{Index: 0, Field: "type", Reason: "must be a non-empty string"}}},
		{"type too long", event.FormatJSON, `[{"user_id":"u","type":"` + strings.Repeat("a", 129) + `"}]`, []event.Problem{{Index: 0, Field: "type", Reason: "longer than 128 characters"}}},
		{"ts number", event.FormatJSON, `[{"user_id":"u","type":"a","ts":1714560000}]`, []event.Problem{{Index: 0, Field: "ts", Reason: "must be an RFC 3339 string"}}},
		{"ts not RFC 3339", event.FormatJSON, `[{"user_id":"u","type":"a","ts":"2024-05-01 12:00:00"}]`, []event.Problem{{Index: 0, Field: "ts", Reason: "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z"}}},
		{"ts before 1970 in UTC", event.FormatJSON, `[{"user_id":"u","type":"a","ts":"1970-01-01T00:30:00+01:00"}]`, []event.Problem{{Index: 0, Field: "ts", Reason: "must lie between 1970 and 2105"}}},
		{"ts after 2105", event.FormatJSON, `[{"user_id":"u","type":"a","ts":"2106-01-01T00:00:00Z"}]`, []event.Problem{{Index: 0, Field: "ts", Reason: "must lie between 1970 and 2105"}}},
		{"event_id number", event.FormatJSON, `[{"user_id":"u","type":"a","event_id":5}]`, []event.Problem{{Index: 0, Field: "event_id", Reason: "must be a non-empty string"}}},
		{"event_id empty", event.FormatJSON, `[{"user_id":"u","type":"a","event_id":""}]`, []event.Problem{{Index: 0, Field: "event_id", Reason: "must be a non-empty string"}}},
		{"event_id too long", event.FormatJSON, `[{"user_id":"u","type":"a","event_id":"` + long + `"}]`, []event.Problem{{Index: 0, Field: "event_id", Reason: "longer than 256 bytes"}}},
		{"properties array", event.FormatJSON, `[{"user_id":"u","type":"a","properties":[1]}]`, []event.Problem{{Index: 0, Field: "properties", Reason: "must be a JSON object"}}},
		{"properties string", event.FormatJSON, `[{"user_id":"u","type":"a","properties":"{}"}]`, []event.Problem{{Index: 0, Field: "properties", Reason: "must be a JSON object"}}},
		{"unknown fields, sorted", event.FormatJSON, `[{"user_id":"u","type":"a","zeta":1,"tenant":"x"}]`, []event.Problem{
			{Index: 0, Field: "tenant", Reason: "unknown field"},
			{Index: 0, Field: "zeta", Reason: "unknown field"},
		}},
		{"field names are case-sensitive", event.FormatJSON, `[{"USER_ID":"u","type":"a"}]`, []event.Problem{
			{Index: 0, Field: "USER_ID", Reason: "unknown field"},
			{Index: 0, Field: "user_id", Reason: "required"},
		}},
		{"event not an object", event.FormatJSON, `[{"user_id":"u","type":"a"}, 7, "x", null]`, []event.Problem{
			{Index: 1, Reason: "event must be a JSON object"},
			{Index: 2, Reason: "event must be a JSON object"},
			{Index: 3, Reason: "event must be a JSON object"},
		}},
		{"every problem of every event", event.FormatJSON, `[{"user_id":"u","type":"a"},{"ts":"x"},{"user_id":"u","type":"a","properties":5}]`, []event.Problem{
			{Index: 1, Field: "user_id", Reason: "required"},
			{Index: 1, Field: "type", Reason: "required"},
			{Index: 1, Field: "ts", Reason: "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z"},
			{Index: 2, Field: "properties", Reason: "must be a JSON object"},
		}},
		{"body not an array", event.FormatJSON, `"events"`, []event.Problem{{Index: -1, Reason: "body must be a JSON array of event objects"}}},
		{"data after the array", event.FormatJSON, `[{"user_id":"u","type":"a"}] {}`, []event.Problem{{Index: -1, Reason: "unexpected data after the JSON array"}}},
		{"bracket after the array", event.FormatJSON, `[{"user_id":"u","type":"a"}]]`, []event.Problem{{Index: -1, Reason: "unexpected data after the JSON array"}}},
		{"data after a single object", event.FormatJSON, `{"user_id":"u","type":"a"} {"user_id":"u","type":"a"}`, []event.Problem{{Index: 0, Reason: "malformed JSON: invalid character '{' after top-level value"}}},
		{"malformed second element", event.FormatJSON, `[{"user_id":"u","type":"a"}, {"user_id":}]`, []event.Problem{{Index: 1, Reason: "malformed JSON: invalid character '}' looking for beginning of value"}}},
		{"unterminated array", event.FormatJSON, `[{"user_id":"u","type":"a"}`, []event.Problem{{Index: 1, Reason: "malformed JSON: EOF"}}},
		{"ndjson bad line", event.FormatNDJSON, "{\"user_id\":\"u\",\"type\":\"a\"}\n{\"user_id\":\n{\"type\":\"a\"}\n", []event.Problem{
			{Index: 1, Reason: "malformed JSON: unexpected end of JSON input"},
			{Index: 2, Field: "user_id", Reason: "required"},
		}},
		{"ndjson trailing data on a line", event.FormatNDJSON, `{"user_id":"u","type":"a"} x`, []event.Problem{{Index: 0, Reason: "malformed JSON: invalid character 'x' after top-level value"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := newParser(event.Limits{}).Parse(strings.NewReader(tt.body), tt.format, "acme")
			require.Nil(t, got)
			var ve *event.ValidationError
			require.ErrorAs(t, err, &ve)
			require.Equal(t, tt.want, ve.Problems)
			require.NotErrorIs(t, err, event.ErrEventTooLarge)
		})
	}
}

func TestParseLimits(t *testing.T) {
	one := `{"user_id":"u","type":"a"}`
	t.Run("too many events in an array", func(t *testing.T) {
		_, err := newParser(event.Limits{MaxEvents: 2}).Parse(strings.NewReader("["+one+","+one+","+one+"]"), event.FormatJSON, "acme")
		require.ErrorIs(t, err, event.ErrTooManyEvents)
	})
	t.Run("too many events in ndjson", func(t *testing.T) {
		_, err := newParser(event.Limits{MaxEvents: 2}).Parse(strings.NewReader(one+"\n"+one+"\n"+one), event.FormatNDJSON, "acme")
		require.ErrorIs(t, err, event.ErrTooManyEvents)
	})
	t.Run("exactly the event limit", func(t *testing.T) {
		got, err := newParser(event.Limits{MaxEvents: 2}).Parse(strings.NewReader(one+"\n"+one), event.FormatNDJSON, "acme")
		require.NoError(t, err)
		require.Len(t, got, 2)
	})
	t.Run("event too large", func(t *testing.T) {
		big := `{"user_id":"u","type":"a","properties":{"p":"` + strings.Repeat("x", 100) + `"}}`
		_, err := newParser(event.Limits{MaxEventBytes: 100}).Parse(strings.NewReader("["+one+","+big+",{}]"), event.FormatJSON, "acme")
		require.ErrorIs(t, err, event.ErrEventTooLarge)
		var ve *event.ValidationError
		require.ErrorAs(t, err, &ve)
		require.Equal(t, 3, ve.Events)
		require.Equal(t, []event.Problem{{Index: 1, Reason: fmt.Sprintf("event is %d bytes, limit is 100", len(big))}}, ve.Problems)
	})
	t.Run("event exactly at the size limit", func(t *testing.T) {
		got, err := newParser(event.Limits{MaxEventBytes: len(one)}).Parse(strings.NewReader(one), event.FormatNDJSON, "acme")
		require.NoError(t, err)
		require.Len(t, got, 1)
	})
	t.Run("problems are capped at 100", func(t *testing.T) {
		body := "[" + strings.TrimSuffix(strings.Repeat(`{"type":"a"},`, 150), ",") + "]"
		_, err := newParser(event.Limits{}).Parse(strings.NewReader(body), event.FormatJSON, "acme")
		var ve *event.ValidationError
		require.ErrorAs(t, err, &ve)
		require.Len(t, ve.Problems, 100)
		require.Equal(t, 150, ve.Events)
		require.Equal(t, event.Problem{Index: 99, Field: "user_id", Reason: "required"}, ve.Problems[99])
	})
}

func TestParseEmpty(t *testing.T) {
	for _, tt := range []struct {
		name   string
		format event.Format
		body   string
	}{
		{"empty body", event.FormatJSON, ""},
		{"whitespace", event.FormatJSON, " \n\t"},
		{"empty array", event.FormatJSON, "[ ]"},
		{"empty ndjson", event.FormatNDJSON, "\n\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newParser(event.Limits{}).Parse(strings.NewReader(tt.body), tt.format, "acme")
			require.ErrorIs(t, err, event.ErrEmpty)
		})
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

func TestParseReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := newParser(event.Limits{}).Parse(failingReader{boom}, event.FormatJSON, "acme")
	require.ErrorIs(t, err, boom)
}

func TestValidationErrorMessage(t *testing.T) {
	err := &event.ValidationError{Problems: []event.Problem{{Index: 2, Field: "type", Reason: "required"}, {Index: 3, Field: "ts", Reason: "x"}}}
	require.Equal(t, "2 invalid event field(s), first: event 2 type: required", err.Error())
	require.Equal(t, "invalid events", (&event.ValidationError{}).Error())
}

func TestProblemsString(t *testing.T) {
	ps := event.Problems{{Index: 1, Field: "type", Reason: "required"}, {Index: -1, Reason: "body is not JSON"}, {Index: 0, Field: "properties.a", Reason: "invalid UTF-8"}}
	require.Equal(t, "event 1: type: required; body is not JSON; event 0: properties.a: invalid UTF-8", ps.String())
	require.Equal(t, "type: required; body is not JSON; properties.a: invalid UTF-8", ps.Reasons())
	require.Empty(t, event.Problems(nil).String())
}
