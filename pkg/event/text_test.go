package event

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// textCases are JSON string literals, as sent, with the text encoding/json
// would decode them to (U+FFFD for what is invalid).
var textCases = []struct {
	name    string
	literal string
	decoded string
	valid   bool
}{
	{"raw invalid byte", "\"a\xffb\"", "a\uFFFDb", false},
	{"truncated multi-byte sequence", "\"caf\xc3\"", "caf\uFFFD", false},
	{"encoded surrogate", "\"\xed\xa0\x80\"", "\uFFFD\uFFFD\uFFFD", false},
	{"lone high surrogate escape", `"x\ud800y"`, "x\uFFFDy", false},
	{"lone low surrogate escape", `"\udc00"`, "\uFFFD", false},
	{"high surrogate escape at the end", `"x\uD83D"`, "x\uFFFD", false},
	{"high surrogate escape before another escape", `"\ud800\u0041"`, "\uFFFDA", false},
	{"surrogate pair reversed", `"\ude00\ud83d"`, "\uFFFD\uFFFD", false},
	{"surrogate pair", `"\uD83D\uDE00"`, "😀", true},
	{"valid multi-byte text", `"café 😀 日本"`, "café 😀 日本", true},
}

// textFields place a text case (%[1]s) in each kind of field. path names
// the field when the text is invalid, {key} standing for the decoded text; key
// says the text is a key. valid is what a valid text gives: the problem
// the event has anyway, or the field's value from the decoded text.
var textFields = []struct {
	name  string
	event string
	path  string
	key   bool
	valid func(decoded, literal string) (Problem, func(Event) bool)
}{
	{"type", `{"user_id":"u","type":%[1]s}`, "type", false, value(func(e Event) string { return e.Type })},
	{"user_id", `{"user_id":%[1]s,"type":"a"}`, "user_id", false, value(func(e Event) string { return e.UserID })},
	{"event_id", `{"user_id":"u","type":"a","event_id":%[1]s}`, "event_id", false, value(func(e Event) string { return e.EventID })},
	{"ts", `{"user_id":"u","type":"a","ts":%[1]s}`, "ts", false, problem("ts", "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")},
	{"key of the event", `{%[1]s:1,"user_id":"u","type":"a"}`, "{key}", true, func(decoded, _ string) (Problem, func(Event) bool) {
		return Problem{Field: decoded, Reason: "unknown field"}, nil
	}},
	{"properties not an object", `{"user_id":"u","type":"a","properties":%[1]s}`, "properties", false, problem("properties", "must be a JSON object")},
	{"property key", `{"user_id":"u","type":"a","properties":{%[1]s:1}}`, "properties.{key}", true, properties(`{%s:1}`)},
	{"property value", `{"user_id":"u","type":"a","properties":{"name":%[1]s}}`, "properties.name", false, properties(`{"name":%s}`)},
	{"nested object value", `{"user_id":"u","type":"a","properties":{"a":{"b":[true,null],"c":%[1]s}}}`, "properties.a.c", false, properties(`{"a":{"b":[true,null],"c":%s}}`)},
	{"array element", `{"user_id":"u","type":"a","properties":{"list":["ok",%[1]s]}}`, "properties.list[1]", false, properties(`{"list":["ok",%s]}`)},
	{"value in an object in an array", `{"user_id":"u","type":"a","properties":{"list":[1,{"x":%[1]s}]}}`, "properties.list[1].x", false, properties(`{"list":[1,{"x":%s}]}`)},
	{"key in an object in an array", `{"user_id":"u","type":"a","properties":{"list":[[],{%[1]s:0}]}}`, "properties.list[1].{key}", true, properties(`{"list":[[],{%s:0}]}`)},
	{"spaced properties", `{"user_id":"u","type":"a","properties":{ "k" : [ %[1]s ] }}`, "properties.k[0]", false, properties(`{"k":[%s]}`)},
}

func value(get func(Event) string) func(decoded, literal string) (Problem, func(Event) bool) {
	return func(decoded, _ string) (Problem, func(Event) bool) {
		return Problem{}, func(e Event) bool { return get(e) == decoded }
	}
}

func problem(field, reason string) func(decoded, literal string) (Problem, func(Event) bool) {
	return func(string, string) (Problem, func(Event) bool) { return Problem{Field: field, Reason: reason}, nil }
}

// properties expects properties to be the object format with the literal
// as sent: valid text is stored as it came, escapes and all.
func properties(format string) func(decoded, literal string) (Problem, func(Event) bool) {
	return func(_, literal string) (Problem, func(Event) bool) {
		want := fmt.Sprintf(format, literal)
		return Problem{}, func(e Event) bool { return e.Properties == want }
	}
}

func TestInvalidTextIsRejectedWithTheFieldNamed(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	p := &Parser{Limits: Limits{MaxEvents: 10, MaxEventBytes: 1024}, Now: func() time.Time { return at }}
	for _, f := range textFields {
		for _, tc := range textCases {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				ev := fmt.Sprintf(f.event, tc.literal)
				bodies := map[Format]string{
					FormatJSON:   `[{"user_id":"ok","type":"a"},` + ev + `]`,
					FormatNDJSON: "{\"user_id\":\"ok\",\"type\":\"a\"}\n" + ev + "\n",
				}
				for format, body := range bodies {
					fast, fastOK := p.parseFast([]byte(body), format, "t", at, counterIDs())
					general, err := p.parseGeneral([]byte(body), format, "t", at, counterIDs())
					items, eachErr := p.ParseEach([]byte(body), format, "t", at, func(int) string { return "gen" })
					require.NoError(t, eachErr)
					require.Len(t, items, 2)
					require.Empty(t, items[0].Problems)

					var want Problem
					var check func(Event) bool
					if tc.valid {
						want, check = f.valid(tc.decoded, tc.literal)
					} else {
						want = Problem{Field: strings.ReplaceAll(f.path, "{key}", tc.decoded), Reason: "invalid UTF-8"}
						if f.key {
							want.Reason = "invalid UTF-8 in key"
						}
						require.False(t, fastOK, "the fast path must defer invalid text to the general path")
					}
					if want.Reason == "" {
						require.NoError(t, err)
						require.Len(t, general, 2)
						require.True(t, check(general[1]), "%+v", general[1])
						require.Empty(t, items[1].Problems)
						require.True(t, check(items[1].Event), "%+v", items[1].Event)
						if fastOK {
							require.Equal(t, general, fast)
						}
						continue
					}
					want.Index = 1
					require.False(t, fastOK)
					var ve *ValidationError
					require.ErrorAs(t, err, &ve)
					require.Equal(t, []Problem{want}, ve.Problems)
					require.Equal(t, []Problem{want}, items[1].Problems, "ParseEach answers as ParseBytes")
					_, err = p.ParseBytes([]byte(body), format, "t")
					require.Equal(t, &ValidationError{Problems: []Problem{want}, Events: 2}, err)
				}
			})
		}
	}
}

func TestInvalidTextIsNamedInEveryField(t *testing.T) {
	p := &Parser{}
	body := "{\"user_id\":\"\xff\",\"type\":\"\\udc00\",\"\xfe\":1,\"zz\":\"\xfd\",\"properties\":{\"a\":\"ok\",\"b\":{\"c\":\"\xc3\"},\"d\":\"\xc3\"}}"
	_, err := p.ParseBytes([]byte(body), FormatJSON, "t")
	var ve *ValidationError
	require.ErrorAs(t, err, &ve)
	require.Equal(t, []Problem{
		{Index: 0, Field: "zz", Reason: "unknown field"},
		{Index: 0, Field: "\uFFFD", Reason: "invalid UTF-8 in key"},
		{Index: 0, Field: "user_id", Reason: "invalid UTF-8"},
		{Index: 0, Field: "type", Reason: "invalid UTF-8"},
		{Index: 0, Field: "properties.b.c", Reason: "invalid UTF-8"}, // the first of properties
	}, ve.Problems)
}

func TestInvalidUserIDsNoLongerShareAShardKey(t *testing.T) {
	p := &Parser{}
	for _, id := range []string{"\"\xff\"", "\"\xfe\"", `"\ud800"`, `"\udfff"`} {
		_, err := p.ParseBytes([]byte(`{"type":"a","user_id":`+id+`}`), FormatJSON, "t")
		require.Equal(t, &ValidationError{Problems: []Problem{{Index: 0, Field: "user_id", Reason: "invalid UTF-8"}}, Events: 1}, err, id)
	}
}

// FuzzTextIntegrity puts arbitrary bytes in a JSON string in each kind of
// field and checks the parser against what encoding/json makes of them:
// text that decodes with a U+FFFD it did not spell out is rejected with
// the field named, on both paths; other text is never rejected for it.
func FuzzTextIntegrity(f *testing.F) {
	for _, tc := range textCases {
		f.Add(strings.Trim(tc.literal, `"`))
	}
	f.Add(`\ud83d\ude00\ud83d`)
	f.Add("\xf0\x9f\x98")
	f.Add("\xf4\x90\x80\x80") // past U+10FFFF
	f.Add("\xc0\xaf")         // overlong
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	p := &Parser{Limits: Limits{MaxEvents: 10}}
	f.Fuzz(func(t *testing.T, text string) {
		literal := `"` + strings.ReplaceAll(text, `"`, `\"`) + `"`
		var decoded string
		if json.Unmarshal([]byte(literal), &decoded) != nil || spellsReplacement(literal) {
			return // not a string, or U+FFFD was sent: no oracle
		}
		invalid := strings.ContainsRune(decoded, utf8.RuneError)
		for _, fl := range textFields {
			body := []byte(fmt.Sprintf(fl.event, literal))
			fast, fastOK := p.parseFast(body, FormatJSON, "t", at, counterIDs())
			general, err := p.parseGeneral(body, FormatJSON, "t", at, counterIDs())
			if fastOK {
				require.NoError(t, err, fl.name)
				require.Equal(t, general, fast, fl.name)
			}
			var ve *ValidationError
			if invalid {
				require.False(t, fastOK, fl.name)
				require.ErrorAs(t, err, &ve, fl.name)
				want := Problem{Field: strings.ReplaceAll(fl.path, "{key}", decoded), Reason: "invalid UTF-8"}
				if fl.key {
					want.Reason = "invalid UTF-8 in key"
				}
				require.Equal(t, []Problem{want}, ve.Problems, fl.name)
				continue
			}
			if err != nil {
				require.ErrorAs(t, err, &ve, fl.name)
				for _, pr := range ve.Problems {
					require.NotContains(t, pr.Reason, "UTF-8", fl.name)
				}
				continue
			}
			requireValidText(t, body, general)
		}
	})
}

// spellsReplacement reports whether data holds U+FFFD itself, as UTF-8 or
// as a \ufffd escape: then a U+FFFD after decoding proves nothing.
func spellsReplacement(data string) bool {
	return strings.ContainsRune(data, utf8.RuneError) || strings.Contains(strings.ToLower(data), `\ufffd`)
}

// requireValidText checks what the parser accepted from body: every
// string is valid UTF-8 that decoding did not repair (no U+FFFD that body
// did not spell out), and properties is valid JSON that round-trips.
func requireValidText(t *testing.T, body []byte, events []Event) {
	t.Helper()
	repaired := !spellsReplacement(string(body))
	for _, e := range events {
		for _, s := range []string{e.EventID, e.Tenant, e.UserID, e.Type, e.Properties} {
			require.True(t, utf8.ValidString(s), "%q", s)
			if repaired {
				require.NotContains(t, s, "\uFFFD")
			}
		}
		require.True(t, json.Valid([]byte(e.Properties)), e.Properties)
		var v any
		dec := json.NewDecoder(strings.NewReader(e.Properties))
		dec.UseNumber()
		require.NoError(t, dec.Decode(&v))
		if repaired {
			require.False(t, containsReplacement(v), "properties %q decode with U+FFFD", e.Properties)
		}
		again, err := json.Marshal(v)
		require.NoError(t, err)
		var w any
		dec = json.NewDecoder(bytes.NewReader(again))
		dec.UseNumber()
		require.NoError(t, dec.Decode(&w))
		require.Equal(t, v, w, "properties round-trip")
	}
}

func containsReplacement(v any) bool {
	switch v := v.(type) {
	case string:
		return strings.ContainsRune(v, utf8.RuneError)
	case []any:
		for _, x := range v {
			if containsReplacement(x) {
				return true
			}
		}
	case map[string]any:
		for k, x := range v {
			if strings.ContainsRune(k, utf8.RuneError) || containsReplacement(x) {
				return true
			}
		}
	}
	return false
}
