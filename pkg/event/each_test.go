package event_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
)

func TestDetectFormat(t *testing.T) {
	tests := []struct {
		name   string
		data   string
		format event.Format
		ok     bool
	}{
		{"array", ` [{"a":1},{"a":2}]`, event.FormatJSON, true},
		{"object", `{"a":1}`, event.FormatJSON, true},
		{"pretty object", "{\n  \"a\": 1\n}\n", event.FormatJSON, true},
		{"ndjson", "{\"a\":1}\n{\"a\":2}\n", event.FormatNDJSON, true},
		{"ndjson with a bad line", "{\"a\":1}\nnope\n", event.FormatNDJSON, true},
		{"object then garbage", `{"a":1} x`, event.FormatNDJSON, true},
		{"text", "hello", 0, false},
		{"number", "42", 0, false},
		{"empty", "  \n", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, ok := event.DetectFormat([]byte(tt.data))
			require.Equal(t, tt.ok, ok)
			require.Equal(t, tt.format, f)
		})
	}
}

func TestParseEachKeepsValidEventsBesideInvalidOnes(t *testing.T) {
	p := &event.Parser{Limits: event.Limits{MaxEvents: 10, MaxEventBytes: 200}}
	data := strings.Join([]string{
		`{"user_id":"u1","type":"click"}`,
		`{"user_id":"u2"}`,
		`{"event_id":"mine","user_id":7,"type":"view","ts":"2024-05-01T00:00:00Z","properties":{"a": 1}}`,
		`not json`,
		`{"user_id":"u3","type":"x","properties":{"pad":"` + strings.Repeat("p", 200) + `"}}`,
		`{"user_id":"u4","type":"t","color":"red"}`,
	}, "\n")
	items, err := p.ParseEach([]byte(data), event.FormatNDJSON, "acme", received, func(i int) string { return "gen-" + strconv.Itoa(i) })
	require.NoError(t, err)
	require.Len(t, items, 6)

	require.Empty(t, items[0].Problems)
	require.Equal(t, event.Event{EventID: "gen-0", IDGenerated: true, Tenant: "acme", UserID: "u1", Type: "click", TS: receivedMicro, ReceivedAt: receivedMicro, Properties: "{}"}, items[0].Event)
	require.Equal(t, []event.Problem{{Index: 1, Field: "type", Reason: "required"}}, items[1].Problems)
	require.Equal(t, `{"user_id":"u2"}`, string(items[1].Raw))
	require.Empty(t, items[2].Problems)
	require.Equal(t, event.Event{EventID: "mine", Tenant: "acme", UserID: "7", Type: "view", TS: time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC), ReceivedAt: receivedMicro, Properties: `{"a":1}`}, items[2].Event)
	require.Len(t, items[3].Problems, 1)
	require.Contains(t, items[3].Problems[0].Reason, "malformed JSON")
	require.Equal(t, "not json", string(items[3].Raw))
	require.Len(t, items[4].Problems, 1)
	require.Contains(t, items[4].Problems[0].Reason, "limit is 200")
	require.Equal(t, []event.Problem{{Index: 5, Field: "color", Reason: "unknown field"}}, items[5].Problems)
	require.Equal(t, event.Event{}, items[5].Event)
	for i, it := range items {
		require.Equal(t, i, it.Index)
	}
}

func TestParseEachWholeMessageErrors(t *testing.T) {
	p := &event.Parser{Limits: event.Limits{MaxEvents: 2, MaxEventBytes: 1000}}
	id := func(int) string { return "x" }
	_, err := p.ParseEach([]byte(`[{"user_id":"u","type":"t"},`), event.FormatJSON, "acme", received, id)
	var ve *event.ValidationError
	require.ErrorAs(t, err, &ve)
	_, err = p.ParseEach([]byte(`[1,2,3]`), event.FormatJSON, "acme", received, id)
	require.True(t, errors.Is(err, event.ErrTooManyEvents), "%v", err)
	_, err = p.ParseEach([]byte("\n\n"), event.FormatNDJSON, "acme", received, id)
	require.ErrorIs(t, err, event.ErrEmpty)
}

func TestDerivedIDIsDeterministicULID(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	a := event.DerivedID(at, 42, 0)
	require.Equal(t, a, event.DerivedID(at, 42, 0))
	require.NotEqual(t, a, event.DerivedID(at, 42, 1))
	require.NotEqual(t, a, event.DerivedID(at, 43, 0))
	require.NotEqual(t, a, event.DerivedID(at.Add(time.Millisecond), 42, 0))
	u, err := ulid.ParseStrict(a)
	require.NoError(t, err)
	require.Equal(t, ulid.Timestamp(at), u.Time())
}

func TestValidTenant(t *testing.T) {
	for _, ok := range []string{"demo", "acme-1", "A_b", "aAzZ09_-", strings.Repeat("t", 64)} {
		require.True(t, event.ValidTenant(ok), ok)
	}
	for _, bad := range []string{"", "a.b", "a b", "*", ">", strings.Repeat("t", 65), "é", "a\n",
		// The bytes either side of each range.
		"a@", "a[", "a`", "a{", "a/", "a:", "a\x00", "a\xff"} {
		require.False(t, event.ValidTenant(bad), bad)
	}
}

// TestParseEachMatchesParseBytes holds ParseEach to ParseBytes' answers on
// valid messages, whichever of its paths each event takes.
func TestParseEachMatchesParseBytes(t *testing.T) {
	bodies := []struct {
		data   string
		format event.Format
	}{
		{`[{"user_id":"u1","type":"click"},{"user_id":12,"type":"v","ts":"2024-01-02T03:04:05.123456Z","properties":{"a":[1,{"b":null}]}}]`, event.FormatJSON},
		{`{"event_id":"e\u0031","user_id":"u\"q","type":"t\u00e9"}`, event.FormatJSON},
		{"{\"user_id\":\"a\",\"type\":\"x\"}\n\n{\"user_id\":\"b\",\"type\":\"y\",\"properties\":{ \"k\" : \"v\" }}\n", event.FormatNDJSON},
	}
	for _, b := range bodies {
		n := 0
		p := &event.Parser{Limits: event.Limits{MaxEvents: 10, MaxEventBytes: 1000}, Now: func() time.Time { return received },
			NewID: func(time.Time) string { n++; return "gen-" + strconv.Itoa(n-1) }}
		want, err := p.ParseBytes([]byte(b.data), b.format, "acme")
		require.NoError(t, err)
		items, err := p.ParseEach([]byte(b.data), b.format, "acme", received, func(i int) string { return "gen-" + strconv.Itoa(i) })
		require.NoError(t, err)
		var got []event.Event
		for _, it := range items {
			require.Empty(t, it.Problems)
			got = append(got, it.Event)
		}
		require.Equal(t, want, got, b.data)
	}
}
