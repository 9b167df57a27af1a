package ingest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
)

func TestMapSegment(t *testing.T) {
	received := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		call     string
		req      segmentRequest
		msg      string
		wantWire string
		wantID   string
		problems []event.Problem
	}{
		{
			name: "track, clock an hour fast",
			req:  segmentRequest{SentAt: json.RawMessage(`"2026-05-01T13:00:05Z"`)},
			msg: `{"type":"track","event":"Order <Completed>","userId":"u1","messageId":"m1","properties":{"total":9.5},
				"timestamp":"2026-05-01T13:00:00Z","context":{"ip":"1.2.3.4"},"_metadata":{"x":1},"writeKey":"k"}`,
			wantID: "m1",
			wantWire: `{"event_id":"m1","user_id":"u1","type":"Order <Completed>","ts":"2026-05-01T11:59:55Z",` +
				`"properties":{"total":9.5,"_segment":{"context":{"ip":"1.2.3.4"},"timestamp":"2026-05-01T13:00:00Z"}}}`,
		},
		{
			name: "identify by anonymous number, traits, originalTimestamp and message sentAt",
			msg: `{"type":"identify","anonymousId":12345678901234567890,"traits":{"plan":"pro"},"messageId":"m2",
				"originalTimestamp":"2026-05-01T11:00:00Z","sentAt":"2026-05-01T11:00:01.5Z","channel":"server"}`,
			wantID: "m2",
			wantWire: `{"event_id":"m2","user_id":"12345678901234567890","type":"$identify","ts":"2026-05-01T11:59:58.5Z",` +
				`"properties":{"plan":"pro","_segment":{"channel":"server","originalTimestamp":"2026-05-01T11:00:00Z","sentAt":"2026-05-01T11:00:01.5Z"}}}`,
		},
		{
			name:     "page from the call path keeps name, no times",
			call:     "page",
			msg:      `{"userId":"u","anonymousId":"a","name":"Home","properties":{"path":"/"}}`,
			wantWire: `{"user_id":"u","type":"$page","ts":"2026-05-01T12:00:00Z","properties":{"path":"/","_segment":{"anonymousId":"a","name":"Home"}}}`,
		},
		{
			name:     "screen",
			msg:      `{"type":"screen","userId":7,"name":"Cart"}`,
			wantWire: `{"user_id":"7","type":"$screen","ts":"2026-05-01T12:00:00Z","properties":{"_segment":{"name":"Cart"}}}`,
		},
		{
			name: "group with batch context and integrations merged under its own",
			req: segmentRequest{Context: json.RawMessage(`{"ip":"9.9.9.9","app":"a"}`),
				Integrations: json.RawMessage(`{"All":false}`)},
			msg: `{"type":"group","userId":"u","groupId":"g1","traits":{"n":1},"context":{"app":"b"}}`,
			wantWire: `{"user_id":"u","type":"$group","ts":"2026-05-01T12:00:00Z",` +
				`"properties":{"n":1,"_segment":{"context":{"app":"b","ip":"9.9.9.9"},"groupId":"g1","integrations":{"All":false}}}}`,
		},
		{
			name:     "alias; timestamp and originalTimestamp keep timestamp",
			req:      segmentRequest{SentAt: json.RawMessage(`"2030-01-01T00:00:00Z"`)},
			msg:      `{"type":"alias","userId":"new","previousId":"old","timestamp":"2026-04-01T00:00:00Z","originalTimestamp":"2026-04-01T05:00:00Z"}`,
			wantWire: `{"user_id":"new","type":"$alias","ts":"2026-04-01T00:00:00Z","properties":{"_segment":{"originalTimestamp":"2026-04-01T05:00:00Z","previousId":"old","timestamp":"2026-04-01T00:00:00Z"}}}`,
		},
		{
			name:     "timestamp without sentAt is kept",
			msg:      `{"type":"track","event":"e","userId":"u","timestamp":"2020-02-02T02:02:02.123456789+01:00"}`,
			wantWire: `{"user_id":"u","type":"e","ts":"2020-02-02T01:02:02.123456789Z","properties":{"_segment":{"timestamp":"2020-02-02T02:02:02.123456789+01:00"}}}`,
		},
		{
			name:     "unreadable timestamp gives received_at",
			req:      segmentRequest{SentAt: json.RawMessage(`"2026-05-01T12:00:00Z"`)},
			msg:      `{"type":"track","event":"e","userId":"u","timestamp":"yesterday"}`,
			wantWire: `{"user_id":"u","type":"e","ts":"2026-05-01T12:00:00Z","properties":{"_segment":{"timestamp":"yesterday"}}}`,
		},
		{
			name:     "out of range gives received_at",
			msg:      `{"type":"track","event":"e","userId":"u","timestamp":"1900-01-01T00:00:00Z"}`,
			wantWire: `{"user_id":"u","type":"e","ts":"2026-05-01T12:00:00Z","properties":{"_segment":{"timestamp":"1900-01-01T00:00:00Z"}}}`,
		},
		{
			name:     "a _segment property of the sender's is replaced",
			msg:      `{"type":"track","event":"e","userId":"u","properties":{"z":1,"_segment":"mine"},"channel":"web"}`,
			wantWire: `{"user_id":"u","type":"e","ts":"2026-05-01T12:00:00Z","properties":{"_segment":{"channel":"web"},"z":1}}`,
		},
		{
			name:     "escapes and non-ASCII",
			msg:      `{"type":"track","event":"caf\u00e9 \"x\"","userId":"ü","properties":{}}`,
			wantWire: `{"user_id":"ü","type":"café \"x\"","ts":"2026-05-01T12:00:00Z","properties":{}}`,
		},
		{name: "not an object", msg: `[1]`, problems: []event.Problem{{Index: 3, Reason: "message must be a JSON object"}}},
		{name: "unknown type", msg: `{"type":"hit","userId":"u"}`,
			problems: []event.Problem{{Index: 3, Field: "type", Reason: "must be one of track, identify, page, screen, group, alias"}}},
		{name: "track without event", msg: `{"type":"track","userId":"u","messageId":"m9"}`, wantID: "m9",
			problems: []event.Problem{{Index: 3, Field: "event", Reason: "required for track, a non-empty string"}}},
		{name: "no user", msg: `{"type":"track","event":"e","userId":"","anonymousId":null}`,
			problems: []event.Problem{{Index: 3, Field: "userId", Reason: "userId or anonymousId required, a non-empty string or a number"}}},
		{name: "traits not an object", msg: `{"type":"identify","userId":"u","traits":[1]}`,
			problems: []event.Problem{{Index: 3, Field: "traits", Reason: "must be a JSON object"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mapSegment(json.RawMessage(tt.msg), 3, tt.call, &tt.req, received)
			require.Equal(t, tt.problems, m.Problems)
			require.Equal(t, tt.wantID, m.MessageID)
			if tt.problems == nil {
				require.JSONEq(t, tt.wantWire, string(m.Wire))
				require.Equal(t, tt.wantWire, string(m.Wire), "the sender's properties, then _segment, its keys sorted; nothing escaped")
			}
		})
	}
}

// segmentPost sends a Segment request and returns its status and body.
func (h *harness) segmentPost(path string, headers map[string]string, body io.Reader) (int, http.Header, string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+h.svc.Addr()+path, body)
	require.NoError(h.t, err)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	require.NoError(h.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(h.t, err)
	require.Equal(h.t, "application/json", resp.Header.Get("Content-Type"))
	return resp.StatusCode, resp.Header, string(raw)
}

func (h *harness) deadLetters() []*jetstream.RawStreamMsg {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, streams.DeadLetter)
	require.NoError(h.t, err)
	info, err := s.Info(ctx)
	require.NoError(h.t, err)
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(h.t, err)
		out = append(out, m)
	}
	return out
}

const success = `{"success":true}` + "\n"

func basic(key string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(key+":"))
}

// TestSegmentBatch: one batch of every call type and an invalid message
// stores the valid ones as one INGEST message and dead-letters the other;
// the SDK's retry (a new sentAt) changes nothing.
func TestSegmentBatch(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.APIKeys = map[string]string{"wk-acme": "acme"} })
	batch := func(sentAt string) string {
		return `{"batch":[
			{"type":"track","event":"Signed Up","userId":"u1","messageId":"m1","properties":{"plan":"pro"},"timestamp":"2026-05-01T10:00:00Z"},
			{"type":"identify","userId":"u1","messageId":"m2","traits":{"email":"a@b.c"},"timestamp":"2026-05-01T10:00:00Z"},
			{"type":"track","userId":"u1","messageId":"m3"},
			{"type":"page","anonymousId":"anon","messageId":"m4","name":"Home"},
			{"type":"screen","userId":"u2","messageId":"m5","name":"Cart"},
			{"type":"group","userId":"u2","messageId":"m6","groupId":"g"},
			{"type":"alias","userId":"u2","messageId":"m7","previousId":"anon"}
		],"sentAt":"` + sentAt + `","context":{"library":{"name":"test"}}}`
	}
	status, _, body := h.segmentPost("/v1/batch", map[string]string{"Authorization": basic("wk-acme")}, strings.NewReader(batch("2026-05-01T10:00:01Z")))
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, success, body)
	// The SDK retries with a new sentAt: the messages, not the body, are the key.
	status, _, body = h.segmentPost("/v1/batch", map[string]string{"Authorization": basic("wk-acme"), "X-Retry-Count": "1"}, strings.NewReader(batch("2026-05-01T10:00:09Z")))
	require.Equal(t, http.StatusOK, status, body)

	msgs := h.stored()
	require.Len(t, msgs, 1, "the retry is a duplicate")
	require.Equal(t, "ingest.acme", msgs[0].Subject)
	events := decode(t, msgs[0])
	var got []string
	for _, e := range events {
		require.Equal(t, "acme", e.Tenant)
		got = append(got, e.EventID+" "+e.UserID+" "+e.Type)
	}
	require.Equal(t, []string{"m1 u1 Signed Up", "m2 u1 $identify", "m4 anon $page", "m5 u2 $screen", "m6 u2 $group", "m7 u2 $alias"}, got)
	require.Equal(t, `{"plan":"pro","_segment":{"context":{"library":{"name":"test"}},"timestamp":"2026-05-01T10:00:00Z"}}`, events[0].Properties)
	// ts = received - (sentAt - timestamp): one second before it arrived.
	require.Equal(t, events[0].ReceivedAt.Add(-time.Second), events[0].TS)

	dls := h.deadLetters()
	require.Len(t, dls, 1, "the retry's dead letter is a duplicate")
	dl := dls[0]
	require.Equal(t, "deadletter.ingest.invalid.acme", dl.Subject)
	require.JSONEq(t, `{"type":"track","userId":"u1","messageId":"m3"}`, string(dl.Data))
	require.Equal(t, "event: required for track, a non-empty string", dl.Header.Get(streams.HeaderReason))
	require.Equal(t, "2", dl.Header.Get(streams.HeaderSourceIndex))
	require.Equal(t, "acme", dl.Header.Get(streams.HeaderTenant))
	require.Equal(t, `[{"index":2,"field":"event","reason":"required for track, a non-empty string"}]`, dl.Header.Get(streams.HeaderProblems))
}

// TestSegmentRequests: the auth forms, bodies and paths the SDKs use, and
// what is refused.
func TestSegmentRequests(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.APIKeys = map[string]string{"wk-acme": "acme"} })
	track := func(id string) string {
		return `{"type":"track","event":"e","userId":"u","messageId":"` + id + `"}`
	}
	tests := []struct {
		name    string
		path    string
		headers map[string]string
		body    io.Reader
		status  int
		stored  string // event id stored, "" for none
	}{
		{"basic auth, json", "/v1/batch", map[string]string{"Authorization": basic("wk-acme"), "Content-Type": "application/json"},
			strings.NewReader(`{"batch":[` + track("a1") + `]}`), 200, "a1"},
		{"bearer, text/plain", "/v1/b", map[string]string{"Authorization": "Bearer wk-acme", "Content-Type": "text/plain"},
			strings.NewReader(`{"batch":[` + track("a2") + `]}`), 200, "a2"},
		{"writeKey in body, gzip labelled form-urlencoded", "/v1/batch",
			map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
			gzipped(t, `{"writeKey":"wk-acme","batch":[`+track("a3")+`]}`), 200, "a3"},
		{"call path", "/v1/t", map[string]string{"Authorization": basic("wk-acme")},
			strings.NewReader(`{"event":"e","userId":"u","messageId":"a4"}`), 200, "a4"},
		{"wrong basic key", "/v1/batch", map[string]string{"Authorization": basic("nope")},
			strings.NewReader(`{"batch":[` + track("x1") + `]}`), 401, ""},
		{"wrong body key", "/v1/batch", nil, strings.NewReader(`{"writeKey":"nope","batch":[` + track("x2") + `]}`), 401, ""},
		{"wrong header, right body key", "/v1/batch", map[string]string{"Authorization": "Bearer nope"},
			strings.NewReader(`{"writeKey":"wk-acme","batch":[` + track("x3") + `]}`), 401, ""},
		{"no key", "/v1/batch", nil, strings.NewReader(`{"batch":[` + track("x4") + `]}`), 401, ""},
		{"not JSON", "/v1/batch", map[string]string{"Authorization": basic("wk-acme")}, strings.NewReader(`batch=1`), 400, ""},
		{"batch not an array", "/v1/batch", map[string]string{"Authorization": basic("wk-acme")}, strings.NewReader(`{"batch":{}}`), 400, ""},
		{"no batch", "/v1/batch", map[string]string{"Authorization": basic("wk-acme")}, strings.NewReader(`{}`), 400, ""},
		{"unknown path", "/v1/batches", map[string]string{"Authorization": basic("wk-acme")}, strings.NewReader(`{}`), 404, ""},
	}
	stored := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, hdr, body := h.segmentPost(tt.path, tt.headers, tt.body)
			require.Equal(t, tt.status, status, body)
			if status == http.StatusUnauthorized {
				require.Equal(t, `Basic realm="surge"`, hdr.Get("WWW-Authenticate"))
			}
			msgs := h.stored()
			if tt.stored == "" {
				require.Len(t, msgs, stored)
				return
			}
			require.Equal(t, success, body)
			stored++
			require.Len(t, msgs, stored)
			events := decode(t, msgs[stored-1])
			require.Len(t, events, 1)
			require.Equal(t, tt.stored, events[0].EventID)
			require.Equal(t, "acme", events[0].Tenant)
		})
	}
	require.Empty(t, h.deadLetters())
}

// BenchmarkSegmentEvents maps and validates a batch of 500 tracks shaped
// as analytics-node sends them.
func BenchmarkSegmentEvents(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"batch":[`)
	for i := range 500 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"type":"track","messageId":"m-%d","userId":"user-%d","event":"click","properties":{"path":"/p/%d","ref":"campaign-7","ms":%d},`+
			`"timestamp":"2026-05-01T12:00:00.000Z","context":{"library":{"name":"@segment/analytics-node","version":"3.1.0"}}}`, i, i, i, i)
	}
	sb.WriteString(`],"sentAt":"2026-05-01T12:00:00.100Z"}`)
	var req segmentRequest
	require.NoError(b, json.Unmarshal([]byte(sb.String()), &req))
	raws := req.Batch
	s := &Service{parser: event.Parser{Limits: event.Limits{MaxEvents: 10000, MaxEventBytes: 64 << 10}}}
	b.SetBytes(int64(sb.Len()))
	b.ReportAllocs()
	for b.Loop() {
		if _, events := s.segmentEvents(raws, "", &req, "t", nil); len(events) != 500 {
			b.Fatalf("%d events", len(events))
		}
	}
}
