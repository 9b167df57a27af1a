package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	oteltrace "go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
)

func TestAcceptsValidRequests(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.APIKeys = map[string]string{"key-acme": "acme"} })
	auth := "Bearer key-acme"
	ts := time.Date(2024, 4, 30, 10, 0, 0, 0, time.UTC)

	tests := []struct {
		name    string
		headers map[string]string
		body    io.Reader
		want    []event.Event // EventID "" means a generated ULID
	}{
		{
			name:    "json array",
			headers: map[string]string{"Content-Type": "application/json"},
			body: strings.NewReader(`[
				{"user_id": 42, "type": "click", "properties": { "b" : [1, 2], "a" : "x" }},
				{"user_id": "u-2", "type": "view", "ts": "2024-04-30T12:00:00+02:00", "event_id": "client-1"}
			]`),
			want: []event.Event{
				{UserID: "42", Type: "click", Properties: `{"b":[1,2],"a":"x"}`},
				{EventID: "client-1", UserID: "u-2", Type: "view", TS: ts, Properties: "{}"},
			},
		},
		{
			name:    "single object",
			headers: map[string]string{"Content-Type": "application/json; charset=utf-8"},
			body:    strings.NewReader(`{"user_id": 7, "type": "open"}`),
			want:    []event.Event{{UserID: "7", Type: "open", Properties: "{}"}},
		},
		{
			name:    "ndjson",
			headers: map[string]string{"Content-Type": "application/x-ndjson"},
			body:    strings.NewReader("{\"user_id\":1,\"type\":\"a\"}\n\n{\"user_id\":\"2\",\"type\":\"b\",\"properties\":{\"k\": null}}\n{\"user_id\":3,\"type\":\"c\"}\n"),
			want: []event.Event{
				{UserID: "1", Type: "a", Properties: "{}"},
				{UserID: "2", Type: "b", Properties: `{"k":null}`},
				{UserID: "3", Type: "c", Properties: "{}"},
			},
		},
		{
			name:    "gzip ndjson",
			headers: map[string]string{"Content-Type": "application/ndjson", "Content-Encoding": "gzip"},
			body:    gzipped(t, "{\"user_id\":10,\"type\":\"z\",\"ts\":\"2024-04-30T10:00:00Z\"}\n{\"user_id\":11,\"type\":\"z\"}"),
			want: []event.Event{
				{UserID: "10", Type: "z", TS: ts, Properties: "{}"},
				{UserID: "11", Type: "z", Properties: "{}"},
			},
		},
		{
			name:    "gzip json",
			headers: map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"},
			body:    gzipped(t, `[{"user_id":"g","type":"gz"}]`),
			want:    []event.Event{{UserID: "g", Type: "gz", Properties: "{}"}},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.headers["Authorization"] = auth
			resp := h.do(http.MethodPost, EventsPath, tt.headers, tt.body)
			require.Equal(t, http.StatusAccepted, resp.status, resp.rawBody)
			require.Equal(t, acceptedBody{Accepted: len(tt.want)}, resp.accepted)
			require.Equal(t, fmt.Sprintf(`{"accepted":%d}`+"\n", len(tt.want)), resp.rawBody)

			msgs := h.stored()
			require.Len(t, msgs, i+1, "one message per request")
			m := msgs[i]
			require.Equal(t, "ingest.acme", m.Subject)
			require.Empty(t, m.Header.Get(jetstream.MsgIDHeader), "not every event had an event_id")
			got := decode(t, m)
			require.Len(t, got, len(tt.want))

			received := got[0].ReceivedAt
			require.False(t, received.Before(resp.receivedAt[0]), "received %s before the request %s", received, resp.receivedAt[0])
			require.False(t, received.After(resp.receivedAt[1]))
			var lastID string
			for j := range tt.want {
				w := &tt.want[j]
				w.Tenant, w.ReceivedAt = "acme", received
				if w.TS.IsZero() {
					w.TS = received
				}
				if w.EventID == "" {
					id, err := ulid.ParseStrict(got[j].EventID)
					require.NoError(t, err, "generated id %q", got[j].EventID)
					require.Equal(t, ulid.Timestamp(received), id.Time())
					require.Greater(t, got[j].EventID, lastID, "ULIDs grow within a request")
					lastID = got[j].EventID
					w.EventID, w.IDGenerated = got[j].EventID, true
				}
			}
			require.Equal(t, tt.want, got)
		})
	}
}

func TestRejectsBadInput(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Ingest.APIKeys = map[string]string{"key-acme": "acme", "key-beta": "beta"}
		c.Ingest.MaxBodyBytes = 8 << 10
		c.Ingest.MaxEventBytes = 1 << 10
		c.Ingest.MaxEvents = 5
	})
	const auth = "Bearer key-acme"
	reqHeaders := func(h map[string]string) map[string]string {
		out := map[string]string{"Content-Type": "application/json", "Authorization": auth}
		for k, v := range h {
			if v == "" {
				delete(out, k)
			} else {
				out[k] = v
			}
		}
		return out
	}
	ev := `{"user_id":"u","type":"a"}`
	big := `{"user_id":"u","type":"a","properties":{"p":"` + strings.Repeat("x", 1100) + `"}}`
	gzipBomb := gzipped(t, "["+ev+strings.Repeat(" ", 64<<10)+"]")
	truncatedGzip := gzipped(t, "["+ev+"]").Bytes()
	truncatedGzip = truncatedGzip[:len(truncatedGzip)-6]

	tests := []struct {
		name         string
		method, path string
		headers      map[string]string
		body         io.Reader
		status       int
		message      string
		problems     []event.Problem
		header       [2]string // a response header to check
	}{
		{name: "malformed json", headers: reqHeaders(nil), body: strings.NewReader(`[` + ev + `,{"user_id":]`), status: 400,
			message:  "invalid events; nothing was stored",
			problems: []event.Problem{{Index: 1, Reason: "malformed JSON: invalid character ']' looking for beginning of value"}}},
		{name: "body not an array", headers: reqHeaders(nil), body: strings.NewReader(`"x"`), status: 400,
			message: "invalid events; nothing was stored", problems: []event.Problem{{Index: -1, Reason: "body must be a JSON array of event objects"}}},
		{name: "wrong types per field", headers: reqHeaders(nil), body: strings.NewReader(`[` + ev + `,{"user_id":true,"type":5,"ts":17,"event_id":9,"properties":[]}]`), status: 400,
			message: "invalid events; nothing was stored",
			problems: []event.Problem{
				{Index: 1, Field: "user_id", Reason: "must be a non-empty string or an integer"},
				{Index: 1, Field: "type", Reason: "must be a non-empty string"},
				{Index: 1, Field: "ts", Reason: "must be an RFC 3339 string"},
				{Index: 1, Field: "event_id", Reason: "must be a non-empty string"},
				{Index: 1, Field: "properties", Reason: "must be a JSON object"},
			}},
		{name: "bad ts", headers: reqHeaders(nil), body: strings.NewReader(`{"user_id":"u","type":"a","ts":"yesterday"}`), status: 400,
			message: "invalid events; nothing was stored", problems: []event.Problem{{Index: 0, Field: "ts", Reason: "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z"}}},
		{name: "missing fields", headers: reqHeaders(nil), body: strings.NewReader(`[` + ev + `,{}]`), status: 400,
			message:  "invalid events; nothing was stored",
			problems: []event.Problem{{Index: 1, Field: "user_id", Reason: "required"}, {Index: 1, Field: "type", Reason: "required"}}},
		{name: "invalid UTF-8 in properties", headers: reqHeaders(nil), body: strings.NewReader("[" + ev + ",{\"user_id\":\"u\",\"type\":\"a\",\"properties\":{\"page\":{\"title\":\"caf\xe9\"}}}]"), status: 400,
			message: "invalid events; nothing was stored", problems: []event.Problem{{Index: 1, Field: "properties.page.title", Reason: "invalid UTF-8"}}},
		{name: "lone surrogate escapes", headers: reqHeaders(nil), body: strings.NewReader(`{"user_id":"\ud800","type":"a","properties":{"tags":["\udc00x"]}}`), status: 400,
			message: "invalid events; nothing was stored", problems: []event.Problem{
				{Index: 0, Field: "user_id", Reason: "invalid UTF-8"},
				{Index: 0, Field: "properties.tags[0]", Reason: "invalid UTF-8"},
			}},
		{name: "unknown field", headers: reqHeaders(nil), body: strings.NewReader(`{"user_id":"u","type":"a","tenant":"other"}`), status: 400,
			message: "invalid events; nothing was stored", problems: []event.Problem{{Index: 0, Field: "tenant", Reason: "unknown field"}}},
		{name: "ndjson bad line", headers: reqHeaders(map[string]string{"Content-Type": "application/x-ndjson"}), body: strings.NewReader(ev + "\n[]\n"), status: 400,
			message: "invalid events; nothing was stored", problems: []event.Problem{{Index: 1, Reason: "event must be a JSON object"}}},
		{name: "empty array", headers: reqHeaders(nil), body: strings.NewReader(`[]`), status: 400, message: "request holds no events"},
		{name: "oversize body", headers: reqHeaders(nil), body: strings.NewReader("[" + ev + strings.Repeat(" ", 9<<10) + "]"), status: 413,
			message: "body exceeds 8192 bytes (after decompression)"},
		{name: "oversize event", headers: reqHeaders(nil), body: strings.NewReader("[" + ev + "," + big + "]"), status: 413,
			message: "events too large", problems: []event.Problem{{Index: 1, Reason: fmt.Sprintf("event is %d bytes, limit is 1024", len(big))}}},
		{name: "too many events", headers: reqHeaders(nil), body: strings.NewReader("[" + strings.Repeat(ev+",", 5) + ev + "]"), status: 413,
			message: "too many events in request: limit is 5"},
		{name: "gzip inflating past the limit", headers: reqHeaders(map[string]string{"Content-Encoding": "gzip"}), body: gzipBomb, status: 413,
			message: "body exceeds 8192 bytes (after decompression)"},
		{name: "bad gzip", headers: reqHeaders(map[string]string{"Content-Encoding": "gzip"}), body: strings.NewReader("[" + ev + "]"), status: 400,
			message: "body is not valid gzip: gzip: invalid header"},
		{name: "truncated gzip", headers: reqHeaders(map[string]string{"Content-Encoding": "gzip"}), body: bytes.NewReader(truncatedGzip), status: 400,
			message: "body is not valid gzip: unexpected EOF"},
		{name: "wrong method", method: http.MethodGet, headers: reqHeaders(nil), status: 405,
			message: "method GET not allowed; use POST", header: [2]string{"Allow", "POST"}},
		{name: "wrong content type", headers: reqHeaders(map[string]string{"Content-Type": "text/plain"}), body: strings.NewReader(ev), status: 415,
			message: "Content-Type must be application/json, application/x-ndjson or application/ndjson"},
		{name: "missing content type", headers: reqHeaders(map[string]string{"Content-Type": ""}), body: strings.NewReader(ev), status: 415,
			message: "Content-Type must be application/json, application/x-ndjson or application/ndjson"},
		{name: "wrong content encoding", headers: reqHeaders(map[string]string{"Content-Encoding": "br"}), body: strings.NewReader(ev), status: 415,
			message: "Content-Encoding must be gzip or identity"},
		{name: "unknown path", path: "/v2/events", headers: reqHeaders(nil), body: strings.NewReader(ev), status: 404,
			message: "no such path; events go to POST /v1/events"},
		{name: "missing api key", headers: reqHeaders(map[string]string{"Authorization": ""}), body: strings.NewReader(ev), status: 401,
			message: "missing or invalid API key; send Authorization: Bearer <key>", header: [2]string{"WWW-Authenticate", `Bearer realm="surge"`}},
		{name: "bad api key", headers: reqHeaders(map[string]string{"Authorization": "Bearer key-nope"}), body: strings.NewReader(ev), status: 401,
			message: "missing or invalid API key; send Authorization: Bearer <key>"},
		{name: "not a bearer key", headers: reqHeaders(map[string]string{"Authorization": "Basic key-acme"}), body: strings.NewReader(ev), status: 401,
			message: "missing or invalid API key; send Authorization: Bearer <key>"},
		{name: "bad idempotency key", headers: reqHeaders(map[string]string{"Idempotency-Key": "has space"}), body: strings.NewReader(ev), status: 400,
			message: "Idempotency-Key must be 1 to 200 printable ASCII characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, path := tt.method, tt.path
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = EventsPath
			}
			before := h.streamMsgs()
			resp := h.do(method, path, tt.headers, tt.body)
			require.Equal(t, tt.status, resp.status, resp.rawBody)
			require.Equal(t, errorBody{Error: tt.message, Problems: tt.problems}, resp.errorBody)
			require.True(t, utf8.ValidString(resp.rawBody), "the answer is valid UTF-8 whatever was sent")
			if tt.header[0] != "" {
				require.Equal(t, tt.header[1], resp.header.Get(tt.header[0]))
			}
			require.Equal(t, before, h.streamMsgs(), "nothing stored")

			// The service still answers a valid request.
			ok := h.post(`{"user_id":"ok","type":"ok"}`, "Authorization", "Bearer key-beta")
			require.Equal(t, http.StatusAccepted, ok.status, ok.rawBody)
			require.Equal(t, before+1, h.streamMsgs())
		})
	}
}

func TestIdempotency(t *testing.T) {
	h := start(t, nil)

	t.Run("Idempotency-Key", func(t *testing.T) {
		body := `[{"user_id":1,"type":"a"},{"user_id":2,"type":"b"}]`
		first := h.post(body, "Idempotency-Key", "req-1")
		require.Equal(t, http.StatusAccepted, first.status)
		require.Equal(t, acceptedBody{Accepted: 2}, first.accepted)
		// A retry with another body under the same key is still the same request.
		second := h.post(`{"user_id":3,"type":"c"}`, "Idempotency-Key", "req-1")
		require.Equal(t, http.StatusAccepted, second.status)
		require.Equal(t, acceptedBody{Accepted: 1, Duplicate: true}, second.accepted)
		require.Equal(t, `{"accepted":1,"duplicate":true}`+"\n", second.rawBody)

		msgs := h.stored()
		require.Len(t, msgs, 1)
		require.Equal(t, "default:req-1", msgs[0].Header.Get(jetstream.MsgIDHeader))
		require.Len(t, decode(t, msgs[0]), 2)
	})

	t.Run("every event has an event_id", func(t *testing.T) {
		before := h.streamMsgs()
		body := `[{"user_id":1,"type":"a","event_id":"e-1"},{"user_id":2,"type":"b","event_id":"e-2"}]`
		require.Equal(t, acceptedBody{Accepted: 2}, h.post(body).accepted)
		require.Equal(t, acceptedBody{Accepted: 2, Duplicate: true}, h.post(body).accepted)
		msgs := h.stored()
		require.Len(t, msgs, int(before)+1)
		sum := sha256.Sum256([]byte("default\x00" + body))
		require.Equal(t, hex.EncodeToString(sum[:]), msgs[len(msgs)-1].Header.Get(jetstream.MsgIDHeader))
	})

	t.Run("without ids every request is stored", func(t *testing.T) {
		before := h.streamMsgs()
		body := `[{"user_id":1,"type":"a","event_id":"e-1"},{"user_id":2,"type":"b"}]`
		require.Equal(t, acceptedBody{Accepted: 2}, h.post(body).accepted)
		require.Equal(t, acceptedBody{Accepted: 2}, h.post(body).accepted)
		require.Equal(t, before+2, h.streamMsgs())
	})
}

func TestNATSOutage(t *testing.T) {
	h := start(t, nil)
	port := port(t, h.ns)
	body := `[{"user_id":1,"type":"a","event_id":"outage-1"}]`
	require.Equal(t, http.StatusAccepted, h.post(`{"user_id":0,"type":"before"}`).status)

	h.ns.Shutdown()
	h.ns.WaitForShutdown()
	h.waitReady(false)
	for range 3 {
		resp := h.post(body)
		require.Equal(t, http.StatusServiceUnavailable, resp.status, resp.rawBody)
		require.Equal(t, "1", resp.header.Get("Retry-After"))
		require.Equal(t, "event store unavailable; retry later", resp.errorBody.Error)
	}
	// Answered at once: no publish was attempted (none waited for an ack
	// that cannot come), only the one from before the outage.
	require.Equal(t, uint64(1), histogramCount(t, h.svc.metrics.publishDuration))
	require.Equal(t, 3.0, counterValue(h.svc.metrics.requestsRejected.WithLabelValues(reasonUnavailable)))
	require.Zero(t, counterValue(h.svc.metrics.requestsRejected.WithLabelValues(reasonTimeout)))

	// A new server on the same port and store: the service reconnects.
	h.restartNATS(port)
	// While it reconnects a request may still get 503; any other answer
	// is a failure (counted here: the condition runs on another goroutine).
	var unexpected atomic.Int64
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := h.send(http.MethodPost, EventsPath, map[string]string{"Content-Type": "application/json"}, strings.NewReader(body))
		if !assert.NoError(c, err) {
			return
		}
		if resp.status != http.StatusAccepted && resp.status != http.StatusServiceUnavailable {
			unexpected.Add(1)
		}
		assert.Equal(c, http.StatusAccepted, resp.status, resp.rawBody)
	}, 10*time.Second, 50*time.Millisecond)
	require.Zero(t, unexpected.Load(), "answers other than 202 and 503 while reconnecting")
	h.waitReady(true)
	require.Equal(t, uint64(2), h.streamMsgs(), "the message from before the outage and the one retried")
}

// TestReadyzNamesNATSWhileItIsDown: /readyz says why the service is not
// ready, and turns ready again once NATS is back.
func TestReadyzNamesNATSWhileItIsDown(t *testing.T) {
	h := start(t, nil)
	port := port(t, h.ns)
	h.ns.Shutdown()
	h.ns.WaitForShutdown()
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		code, body, err := h.admin("/readyz")
		if assert.NoError(c, err) {
			assert.Equal(c, http.StatusServiceUnavailable, code)
			assert.Equal(c, "not ready: nats: disconnected\n", body)
		}
	}, 10*time.Second, 20*time.Millisecond)

	h.restartNATS(port)
	h.waitReady(true)
	code, body, err := h.admin("/readyz")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ready\n", body)
}

// TestListenerClosedWhenStartFails: when Run returns before serving (NATS
// unreachable, or cancelled during start-up), the event API's listener is
// closed with it.
func TestListenerClosedWhenStartFails(t *testing.T) {
	tests := []struct {
		name    string
		cancel  bool
		wantErr string
	}{
		{name: "nats unreachable", wantErr: "connect to nats"},
		{name: "cancelled during start-up", cancel: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Nothing listens on a port just released.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			url := "nats://" + ln.Addr().String()
			require.NoError(t, ln.Close())
			cfg := testConfig(url)
			cfg.NATS.ConnectTimeout = 200 * time.Millisecond
			svc, err := New(cfg, service.Deps{Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider()})
			require.NoError(t, err)

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.cancel {
				cancel()
			}
			err = svc.Run(ctx)
			if tt.wantErr == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tt.wantErr)
			}
			_, err = net.Dial("tcp", svc.Addr())
			require.Error(t, err, "the event API no longer listens")
			_, err = net.Dial("tcp", svc.AdminAddr())
			require.Error(t, err, "the admin server no longer listens")
		})
	}
}

func TestPublishTimeout(t *testing.T) {
	h := start(t, nil)
	// Replace the stream by a subscriber that never answers: JetStream's
	// ack never comes.
	require.NoError(t, h.js.DeleteStream(context.Background(), streams.Ingest))
	nc, err := nats.Connect(h.ns.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	sub, err := nc.SubscribeSync("ingest.>")
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	resp := h.post(`{"user_id":1,"type":"a"}`)
	require.Equal(t, http.StatusServiceUnavailable, resp.status, resp.rawBody)
	require.Equal(t, "1", resp.header.Get("Retry-After"))
	require.Equal(t, "event store did not acknowledge within 1s; retry later", resp.errorBody.Error)
	require.Equal(t, 1.0, counterValue(h.svc.metrics.requestsRejected.WithLabelValues(reasonTimeout)))
	// Exactly one publish, then the answer: the handler does not retry
	// on its own, the client does. The ping orders the check after
	// every message the server routed before it.
	require.NoError(t, nc.Flush())
	pending, _, err := sub.Pending()
	require.NoError(t, err)
	require.Equal(t, 1, pending)
	m, err := sub.NextMsg(time.Second)
	require.NoError(t, err)
	require.Equal(t, "1", m.Header.Get(streams.HeaderRows))
}

// slowRequest starts a POST whose body the test finishes later; it holds
// an in-flight slot meanwhile.
func slowRequest(t *testing.T, h *harness) (finish func(rest string), result <-chan *http.Response) {
	t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, "http://"+h.svc.Addr()+EventsPath, pr)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	done := make(chan *http.Response, 1)
	go func() {
		resp, err := h.client.Do(req)
		if err != nil {
			done <- nil
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		done <- resp
	}()
	_, err = pw.Write([]byte("["))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return gaugeValue(h.svc.metrics.inFlight) == 1 }, 5*time.Second, 10*time.Millisecond)
	return func(rest string) {
		_, err := pw.Write([]byte(rest))
		require.NoError(t, err)
		require.NoError(t, pw.Close())
	}, done
}

func TestInFlightLimit(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.MaxInFlight = 1 })
	finish, result := slowRequest(t, h)

	resp := h.post(`{"user_id":1,"type":"a"}`)
	require.Equal(t, http.StatusTooManyRequests, resp.status)
	require.Equal(t, "1", resp.header.Get("Retry-After"))
	require.Equal(t, "too many requests in flight; retry later", resp.errorBody.Error)

	finish(`{"user_id":1,"type":"slow"}]`)
	slow := <-result
	require.NotNil(t, slow)
	require.Equal(t, http.StatusAccepted, slow.StatusCode)
	require.Equal(t, http.StatusAccepted, h.post(`{"user_id":1,"type":"a"}`).status, "the slot is free again")
	require.Equal(t, uint64(2), h.streamMsgs())
}

// TestFloodIsRejectedNotQueued: with every slot taken, a flood of
// concurrent requests is answered 429 at once, before any body is read, so
// memory stays bounded by max_in_flight x max_body_bytes; nothing of the
// flood is stored and the held request still succeeds.
func TestFloodIsRejectedNotQueued(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.MaxInFlight = 1 })
	finish, result := slowRequest(t, h)

	const flood = 200
	body := `[` + strings.Repeat(`{"user_id":1,"type":"flood","properties":{"p":"`+strings.Repeat("x", 1000)+`"}},`, 30) + `{"user_id":1,"type":"flood"}]`
	statuses := make(chan string, flood)
	var wg sync.WaitGroup
	for range flood {
		wg.Go(func() {
			resp, err := h.client.Post("http://"+h.svc.Addr()+EventsPath, "application/json", strings.NewReader(body))
			if err != nil {
				statuses <- err.Error()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			statuses <- strconv.Itoa(resp.StatusCode) + " Retry-After=" + resp.Header.Get("Retry-After")
		})
	}
	wg.Wait()
	close(statuses)
	for st := range statuses {
		require.Equal(t, "429 Retry-After=1", st)
	}
	// Every flood request was answered while the held one still had its
	// slot: none waited for a slot.
	select {
	case <-result:
		t.Fatal("the held request finished before the flood was answered")
	default:
	}
	require.Equal(t, 1.0, gaugeValue(h.svc.metrics.inFlight))
	require.Equal(t, float64(flood), testutil.ToFloat64(h.svc.metrics.requestsRejected.WithLabelValues(reasonOverloaded)))
	require.Equal(t, uint64(0), h.streamMsgs())

	finish(`{"user_id":1,"type":"slow"}]`)
	slow := <-result
	require.NotNil(t, slow)
	require.Equal(t, http.StatusAccepted, slow.StatusCode)
	require.Equal(t, uint64(1), h.streamMsgs())
}

func TestShutdownFinishesInFlightRequests(t *testing.T) {
	h := start(t, nil)
	finish, result := slowRequest(t, h)

	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	h.waitReady(false)
	finish(`{"user_id":1,"type":"late"}]`)
	slow := <-result
	require.NotNil(t, slow)
	require.Equal(t, http.StatusAccepted, slow.StatusCode)
	require.NoError(t, <-stopped)
	require.Equal(t, uint64(1), h.streamMsgs())

	_, err := h.client.Post("http://"+h.svc.Addr()+EventsPath, "application/json", strings.NewReader(`{}`))
	require.Error(t, err, "no longer listening")
}

func TestAdminAndMetrics(t *testing.T) {
	h := start(t, nil)
	code, body, err := h.admin("/healthz")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok\n", body)
	code, body, err = h.admin("/readyz")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ready\n", body)

	require.Equal(t, http.StatusAccepted, h.post(`[{"user_id":1,"type":"a"},{"user_id":2,"type":"a"},{"user_id":3,"type":"a"}]`).status)
	require.Equal(t, http.StatusAccepted, h.post(`{"user_id":1,"type":"a"}`+"\n", "Content-Type", "application/x-ndjson").status)
	require.Equal(t, http.StatusAccepted, h.post(`[{"user_id":1,"type":"a"}]`).status)
	require.Equal(t, http.StatusBadRequest, h.post(`[{"user_id":1},{"type":"a"},{},{"user_id":1,"type":"a"}]`).status)
	require.Equal(t, http.StatusUnsupportedMediaType, h.post(`{}`, "Content-Type", "text/csv").status)
	require.Equal(t, http.StatusNotFound, h.do(http.MethodGet, "/", nil, nil).status)

	code, body, err = h.admin("/metrics")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)
	for _, line := range []string{
		"surge_ingest_events_accepted_total 5",
		`surge_ingest_events_rejected_total{reason="invalid"} 4`,
		`surge_ingest_requests_rejected_total{reason="invalid"} 1`,
		`surge_ingest_requests_rejected_total{reason="unsupported_media_type"} 1`,
		`surge_ingest_requests_rejected_total{reason="not_found"} 1`,
		`surge_ingest_requests_total{code="202"} 3`,
		`surge_ingest_requests_total{code="400"} 1`,
		`surge_ingest_requests_total{code="404"} 1`,
		`surge_ingest_requests_total{code="415"} 1`,
		"surge_ingest_request_duration_seconds_count 6",
		"surge_ingest_publish_duration_seconds_count 3",
		"surge_ingest_in_flight 0",
	} {
		require.Contains(t, strings.Split(body, "\n"), line)
	}
	require.NotContains(t, body, `surge_ingest_events_rejected_total{reason="unsupported_media_type"}`, "events of unread bodies are not counted")
}

func TestTraceContextReachesTheMessage(t *testing.T) {
	h := start(t, nil)
	const traceID = "0af7651916cd43dd8448eb211c80319c"
	resp := h.post(`{"user_id":1,"type":"a"}`, "traceparent", "00-"+traceID+"-b7ad6b7169203331-01")
	require.Equal(t, http.StatusAccepted, resp.status)

	msgs := h.stored()
	require.Len(t, msgs, 1)
	tp := msgs[0].Header.Get("traceparent")
	require.True(t, strings.HasPrefix(tp, "00-"+traceID+"-"), "traceparent %q", tp)

	var names []string
	require.Eventually(t, func() bool { return len(h.spans.Ended()) == 2 }, 5*time.Second, 10*time.Millisecond)
	for _, s := range h.spans.Ended() {
		require.Equal(t, traceID, s.SpanContext().TraceID().String())
		names = append(names, s.Name())
		if s.SpanKind() == oteltrace.SpanKindProducer {
			require.Equal(t, "00-"+traceID+"-"+s.SpanContext().SpanID().String()+"-01", tp, "the message carries the publish span")
		}
	}
	require.ElementsMatch(t, []string{"POST /v1/events", "publish ingest.default"}, names)
}

func TestMessageTooLarge(t *testing.T) {
	// Small events grow when encoded (a generated ULID, the tenant, two
	// timestamps), so a body under the limit can still exceed a message.
	h := start(t, func(c *Config) {
		c.Streams.MaxMsgSize = 64 << 10
		c.Ingest.MaxBodyBytes = 64 << 10
	})
	body := "[" + strings.TrimSuffix(strings.Repeat(`{"user_id":1,"type":"a"},`, 2000), ",") + "]"
	require.Less(t, len(body), 64<<10)
	resp := h.post(body)
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.status, resp.rawBody)
	require.Regexp(t, `^request encodes to \d+ bytes, more than the 65536 one message may hold; send fewer events$`, resp.errorBody.Error)
	require.Zero(t, h.streamMsgs())
	require.Equal(t, 2000.0, counterValue(h.svc.metrics.eventsRejected.WithLabelValues(reasonMessageTooLarge)))
}
