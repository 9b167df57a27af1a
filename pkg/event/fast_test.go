package event

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func counterIDs() func(time.Time) string {
	n := 0
	return func(time.Time) string { n++; return "id-" + strconv.Itoa(n) }
}

var fastSeeds = []string{
	`[{"user_id":"u","type":"a","ts":"2024-05-01T12:00:00Z","properties":{"a":[1,2]}}]`,
	`[ {"user_id": 42, "type": "click", "properties": { "x" : [ 1 , {"y": null} ], "s": "\u00e9\n" } } ,{"user_id":"b","type":"c"} ]`,
	`{"user_id":-7,"type":"a","event_id":"x","ts":null,"properties":null}`,
	`[{"user_id":"\u0041","type":"caf\u00e9","event_id":"e\"1"}]`,
	`[{"user_id":"u","type":"a","user_id":"v"}]`,
	`[{"user_id":"u","type":"a","extra":1}]`,
	`[{"user_id":007,"type":"a"}]`,
	`[{"user_id":1e3,"type":"a"}]`,
	`[{"user_id":-0,"type":"a"}]`,
	`[{"user_id":12345678901234567890,"type":"a"}]`,
	`[{"user_id":"u","type":"a","ts":"1969-12-31T23:59:59Z"}]`,
	`[{"user_id":"u","type":"a","ts":"2024-05-01T12:00:00.1234567+02:00"}]`,
	`[{"user_id":"u","type":"a","properties":[]}]`,
	`[{"user_id":"u","type":"a","properties":{"a":tru}}]`,
	`[{"user_id":"u","type":"a"}]x`,
	`[{"user_id":"u","type":"a"},]`,
	`[]`,
	"{\"user_id\":\"u\",\"type\":\"a\"}\n{\"user_id\":2,\"type\":\"b\"}\n\n",
	"[{\"user_id\":\"\xff\",\"type\":\"a\"}]",
	"[{\"user_id\":\"u\",\"type\":\"a\",\"properties\":{\"k\":\"\xff\"}}]",
	// Text that is not valid Unicode, in every kind of field.
	"[{\"user_id\":\"u\",\"type\":\"caf\xc3\"}]",
	"{\"user_id\":\"u\",\"type\":\"a\",\"event_id\":\"\xed\xa0\x80\"}",
	`[{"user_id":"\ud800","type":"a"}]`,
	`[{"user_id":"u","type":"a","ts":"2024-05-01T12:00:00Z\udc00"}]`,
	"[{\"user_id\":\"u\",\"type\":\"a\",\"properties\":{\"\xed\xb0\x80\":1}}]",
	`[{"user_id":"u","type":"a","properties":{"a":{"b":["x","\uDE00\uD83D"]}}}]`,
	`[{"user_id":"u","type":"a","properties":{"a":[{"\ud83d":null}]}}]`,
	"[{\"user_id\":\"u\",\"type\":\"a\",\"\xff\":1}]",
	"{\"user_id\":\"u\",\"type\":\"a\",\"properties\":{ \"k\" : [ \"\xf0\x9f\x98\" ] }}",
	// Valid text beside it: a surrogate pair and multi-byte characters.
	`[{"user_id":"\uD83D\uDE00","type":"caf\u00e9","properties":{"\ud83d\ude00":"😀 日本"}}]`,
	"{\"user_id\":\"😀\",\"type\":\"日本\",\"event_id\":\"é\",\"properties\":{\"é\":[\"😀\"]}}",
}

// FuzzFastMatchesSlow holds the fast path to the general path's answers:
// whatever the fast path accepts, the general path accepts identically.
// And whatever either accepts is valid text: every string valid UTF-8
// that decoding did not repair, properties valid JSON that round-trips.
func FuzzFastMatchesSlow(f *testing.F) {
	for _, s := range fastSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte, ndjson bool) {
		format := FormatJSON
		if ndjson {
			format = FormatNDJSON
		}
		p := &Parser{Limits: Limits{MaxEvents: 50, MaxEventBytes: 2048}}
		fast, ok := p.parseFast(body, format, "t", at, counterIDs())
		general, err := p.parseGeneral(body, format, "t", at, counterIDs())
		if err == nil {
			requireValidText(t, body, general)
		}
		if !ok {
			return
		}
		require.NoError(t, err, "fast path accepted what the general path rejects")
		require.Equal(t, general, fast)
	})
}

func TestFastPathTakesWellFormedRequests(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	p := &Parser{Limits: Limits{MaxEvents: 50, MaxEventBytes: 2048}}
	for _, body := range fastSeeds[:4] {
		_, ok := p.parseFast([]byte(body), FormatJSON, "t", at, counterIDs())
		require.True(t, ok, body)
	}
	_, ok := p.parseFast([]byte(fastSeeds[17]), FormatNDJSON, "t", at, counterIDs())
	require.True(t, ok)
}

func BenchmarkParse(b *testing.B) {
	var body []byte
	body = append(body, '[')
	for i := range 500 {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"user_id":"user-`+strconv.Itoa(i)+`","type":"page_view","properties":{"path":"/p/1","ref":"campaign-7","ms":1234}}`...)
	}
	body = append(body, ']')
	p := &Parser{Limits: Limits{MaxEvents: 10000, MaxEventBytes: 65536}, NewID: func(time.Time) string { return "01J00000000000000000000000" }}
	at := time.Now()
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if _, ok := p.parseFast(body, FormatJSON, "t", at, p.NewID); !ok {
				b.Fatal("fast path refused")
			}
		}
	})
	b.Run("general", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		for b.Loop() {
			if _, err := p.parseGeneral(body, FormatJSON, "t", at, p.NewID); err != nil {
				b.Fatal(err)
			}
		}
	})
}
