package ingest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
)

// fakePath is where the tests register fakeProtocol.
const fakePath = "/v1/fake"

// fakeProtocol is a wire format of the tests' own, to show what the
// service does for every protocol. Its body is one event a line, "<user>
// <type>"; a line "!" is an invalid item, dead-lettered when partial; a
// body "refuse" is refused. Its tenant is the Fake-Tenant header, its
// content's message id the Fake-Id header.
type fakeProtocol struct {
	partial bool
	// entered and proceed, when set, hold decode: it sends on entered,
	// then waits for proceed.
	entered chan<- struct{}
	proceed <-chan struct{}

	mu     sync.Mutex
	bodies []string // what decode was given
}

var _ protocol = (*fakeProtocol)(nil)

func (f *fakeProtocol) authorize(r *http.Request) (string, reply) {
	tenant := r.Header.Get("Fake-Tenant")
	if tenant == "" {
		rep := reject(http.StatusUnauthorized, reasonUnauthorized, "no Fake-Tenant")
		rep.challenge = "Fake"
		return "", rep
	}
	return tenant, reply{}
}

func (f *fakeProtocol) decode(r *http.Request, body []byte, tenant string) (decoded, reply) {
	f.mu.Lock()
	f.bodies = append(f.bodies, string(body))
	f.mu.Unlock()
	if f.entered != nil {
		f.entered <- struct{}{}
		<-f.proceed
	}
	if string(body) == "refuse" {
		rep := reject(http.StatusBadRequest, reasonInvalid, "refused")
		rep.problems = []event.Problem{{Index: 0, Field: "body", Reason: "refused"}}
		rep.events = 1
		return decoded{}, rep
	}
	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	d := decoded{tenant: tenant, msgID: r.Header.Get("Fake-Id"), partial: f.partial}
	for i, line := range strings.Split(string(body), "\n") {
		d.items++
		if line == "!" {
			d.invalid = append(d.invalid, invalidItem{index: i, data: []byte(line), problems: []event.Problem{{Index: i, Field: "line", Reason: "is !"}}})
			continue
		}
		user, typ, _ := strings.Cut(line, " ")
		d.events = append(d.events, event.Event{EventID: fmt.Sprintf("e%d", i), Tenant: tenant, UserID: user, Type: typ, TS: at, ReceivedAt: at, Properties: "{}"})
	}
	return d, reply{}
}

type fakeAnswer struct {
	Stored    int  `json:"stored"`
	Duplicate bool `json:"duplicate"`
}

func (f *fakeProtocol) answer(st stored) (int, any) {
	return http.StatusCreated, fakeAnswer{Stored: st.events, Duplicate: st.duplicate}
}

func (f *fakeProtocol) decoded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.bodies...)
}

// rawResponse is an answer as it came.
type rawResponse struct {
	status int
	header http.Header
	body   string
}

// sendRaw sends a request to the event API and returns the answer; it
// only returns errors, so it may run off the test goroutine.
func (h *harness) sendRaw(method, path string, headers map[string]string, body io.Reader) (rawResponse, error) {
	req, err := http.NewRequest(method, "http://"+h.svc.Addr()+path, body)
	if err != nil {
		return rawResponse{}, err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return rawResponse{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return rawResponse{}, fmt.Errorf("read body: %w", err)
	}
	return rawResponse{status: resp.StatusCode, header: resp.Header, body: string(b)}, nil
}

func jsonLine(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b) + "\n"
}

// TestProtocolSeam registers a protocol of the test's own and shows that
// admission, publishing, dead letters, the error bodies, the routing and
// the metrics are the service's, whatever the protocol.
func TestProtocolSeam(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Ingest.MaxBodyBytes = 1 << 10
		c.Ingest.MaxEventBytes = 1 << 10
	})
	fake := &fakeProtocol{}
	h.svc.register(fakePath, fake)
	partialPath := fakePath + "/partial"
	h.svc.register(partialPath, &fakeProtocol{partial: true})

	acme := map[string]string{"Fake-Tenant": "acme"}
	with := func(kv ...string) map[string]string {
		out := map[string]string{"Fake-Tenant": "acme"}
		for i := 0; i+1 < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name         string
		method, path string
		headers      map[string]string
		body         io.Reader
		status       int
		answer       any       // the JSON body
		header       [2]string // a response header to check
		decoded      []string  // the bodies decode was given
		msgID        string    // the INGEST message's id, when one is stored
		users        []string  // its events' users
		deadLetters  []string  // the ids of the DEAD_LETTER messages made
	}{
		{name: "stored", headers: with("Fake-Id", "id-1"), body: strings.NewReader("u1 click\nu2 view"),
			status: 201, answer: fakeAnswer{Stored: 2}, decoded: []string{"u1 click\nu2 view"}, msgID: "id-1", users: []string{"u1", "u2"}},
		{name: "same content id is a duplicate", headers: with("Fake-Id", "id-1"), body: strings.NewReader("u1 click\nu2 view"),
			status: 201, answer: fakeAnswer{Stored: 2, Duplicate: true}, decoded: []string{"u1 click\nu2 view"}},
		{name: "no content id", headers: acme, body: strings.NewReader("u3 click"),
			status: 201, answer: fakeAnswer{Stored: 1}, decoded: []string{"u3 click"}, users: []string{"u3"}},
		{name: "Idempotency-Key replaces the content id", headers: with("Fake-Id", "id-2", HeaderIdempotencyKey, "k1"), body: strings.NewReader("u4 click"),
			status: 201, answer: fakeAnswer{Stored: 1}, decoded: []string{"u4 click"}, msgID: "acme:k1", users: []string{"u4"}},
		{name: "gzip is decompressed before decode", headers: with("Content-Encoding", "gzip"), body: gzipped(t, "u5 click"),
			status: 201, answer: fakeAnswer{Stored: 1}, decoded: []string{"u5 click"}, users: []string{"u5"}},
		{name: "escaped path routes by its decoded path", path: "/v1%2Ffake", headers: acme, body: strings.NewReader("u6 click"),
			status: 201, answer: fakeAnswer{Stored: 1}, decoded: []string{"u6 click"}, users: []string{"u6"}},
		{name: "partial: valid stored, invalid dead-lettered", path: partialPath, headers: with("Fake-Id", "id-3"), body: strings.NewReader("u7 click\n!\n!"),
			status: 201, answer: fakeAnswer{Stored: 1}, msgID: "id-3", users: []string{"u7"}, deadLetters: []string{"ingest:id-3:1", "ingest:id-3:2"}},
		{name: "unauthorized", body: strings.NewReader("u1 click"),
			status: 401, answer: errorBody{Error: "no Fake-Tenant"}, header: [2]string{"WWW-Authenticate", "Fake"}},
		{name: "body too large", headers: acme, body: strings.NewReader(strings.Repeat("u1 click\n", 200)),
			status: 413, answer: errorBody{Error: "body exceeds 1024 bytes (after decompression)"}},
		{name: "bad gzip", headers: with("Content-Encoding", "gzip"), body: strings.NewReader("u1 click, not gzip"),
			status: 400, answer: errorBody{Error: "body is not valid gzip: gzip: invalid header"}},
		{name: "unknown encoding", headers: with("Content-Encoding", "br"), body: strings.NewReader("u1 click"),
			status: 415, answer: errorBody{Error: "Content-Encoding must be gzip or identity"}},
		{name: "bad Idempotency-Key", headers: with(HeaderIdempotencyKey, "has space"), body: strings.NewReader("u1 click"),
			status: 400, answer: errorBody{Error: "Idempotency-Key must be 1 to 200 printable ASCII characters"}},
		{name: "refused by decode", headers: acme, body: strings.NewReader("refuse"),
			status: 400, answer: errorBody{Error: "refused", Problems: []event.Problem{{Index: 0, Field: "body", Reason: "refused"}}}, decoded: []string{"refuse"}},
		{name: "other method", method: http.MethodPut, headers: acme, body: strings.NewReader("u1 click"),
			status: 405, answer: errorBody{Error: "method PUT not allowed; use POST"}, header: [2]string{"Allow", "POST"}},
		{name: "below the path", path: fakePath + "/x", headers: acme, body: strings.NewReader("u1 click"),
			status: 404, answer: errorBody{Error: "no such path; events go to POST /v1/events"}},
		{name: "unclean path is not found, not redirected", path: "/v1//fake", headers: acme, body: strings.NewReader("u1 click"),
			status: 404, answer: errorBody{Error: "no such path; events go to POST /v1/events"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, path := tt.method, tt.path
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = fakePath
			}
			before := fake.decoded()
			ingestBefore, deadBefore := len(h.stored()), len(h.deadLetters())

			resp, err := h.sendRaw(method, path, tt.headers, tt.body)
			require.NoError(t, err)
			require.Equal(t, tt.status, resp.status, resp.body)
			require.Equal(t, "application/json", resp.header.Get("Content-Type"))
			require.Equal(t, jsonLine(t, tt.answer), resp.body)
			if tt.header[0] != "" {
				require.Equal(t, tt.header[1], resp.header.Get(tt.header[0]))
			}
			if path == fakePath {
				got := fake.decoded()[len(before):]
				if len(got) == 0 {
					got = nil
				}
				require.Equal(t, tt.decoded, got, "decode runs once admission passed")
			}

			msgs := h.stored()[ingestBefore:]
			if tt.users == nil {
				require.Empty(t, msgs)
			} else {
				require.Len(t, msgs, 1)
				require.Equal(t, streams.IngestSubject("acme"), msgs[0].Subject)
				require.Equal(t, tt.msgID, msgs[0].Header.Get(jetstream.MsgIDHeader))
				var users []string
				for _, e := range decode(t, msgs[0]) {
					users = append(users, e.UserID)
				}
				require.Equal(t, tt.users, users)
			}

			var ids []string
			for _, dl := range h.deadLetters()[deadBefore:] {
				require.Equal(t, streams.IngestInvalidSubject("acme"), dl.Subject)
				require.Equal(t, "!", string(dl.Data))
				require.Equal(t, "line: is !", dl.Header.Get(streams.HeaderReason))
				ids = append(ids, dl.Header.Get(jetstream.MsgIDHeader))
			}
			require.Equal(t, tt.deadLetters, ids)
		})
	}

	m := h.svc.metrics
	for code, want := range map[string]float64{"201": 7, "400": 3, "401": 1, "404": 2, "405": 1, "413": 1, "415": 1} {
		require.Equal(t, want, counterValue(m.requests.WithLabelValues(code)), code)
	}
	require.Equal(t, 9.0, counterValue(m.eventsAccepted), "every event of every 201, duplicates included")
	for reason, want := range map[string]float64{reasonInvalid: 1, reasonBadGzip: 1, reasonBadRequest: 1, reasonMediaType: 1,
		reasonBodyTooLarge: 1, reasonUnauthorized: 1, reasonNotFound: 2, reasonMethod: 1} {
		require.Equal(t, want, counterValue(m.requestsRejected.WithLabelValues(reason)), reason)
	}
	require.Equal(t, 3.0, counterValue(m.eventsRejected.WithLabelValues(reasonInvalid)), "one refused request's event and two dead letters")
	require.Equal(t, 0.0, gaugeValue(m.inFlight))

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		names := map[string]int{}
		for _, s := range h.spans.Ended() {
			if s.SpanKind() == oteltrace.SpanKindServer {
				names[s.Name()]++
			}
		}
		assert.Equal(c, map[string]int{
			"POST " + fakePath:    12,
			"POST " + partialPath: 1,
			"PUT " + fakePath:     1,
			"POST":                2, // off every route
		}, names)
	}, 5*time.Second, 10*time.Millisecond)
}

// TestProtocolSeamInFlightLimit: a protocol's requests take the shared
// in-flight slots, so one held in decode makes the next 429, whatever its
// protocol.
func TestProtocolSeamInFlightLimit(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.MaxInFlight = 1 })
	entered, proceed := make(chan struct{}), make(chan struct{})
	h.svc.register(fakePath, &fakeProtocol{entered: entered, proceed: proceed})

	type result struct {
		resp rawResponse
		err  error
	}
	held := make(chan result, 1)
	go func() {
		resp, err := h.sendRaw(http.MethodPost, fakePath, map[string]string{"Fake-Tenant": "acme"}, strings.NewReader("u1 click"))
		held <- result{resp, err}
	}()
	<-entered

	resp := h.post(`{"user_id":1,"type":"a"}`)
	require.Equal(t, http.StatusTooManyRequests, resp.status)
	require.Equal(t, "1", resp.header.Get("Retry-After"))
	require.Equal(t, "too many requests in flight; retry later", resp.errorBody.Error)
	require.Equal(t, 1.0, gaugeValue(h.svc.metrics.inFlight))

	close(proceed)
	r := <-held
	require.NoError(t, r.err)
	require.Equal(t, http.StatusCreated, r.resp.status, r.resp.body)
	require.Equal(t, `{"stored":1,"duplicate":false}`+"\n", r.resp.body)
	require.Equal(t, http.StatusAccepted, h.post(`{"user_id":1,"type":"a"}`).status, "the slot is free again")
	require.Equal(t, 0.0, gaugeValue(h.svc.metrics.inFlight))
}

// TestProtocolSeamSpans: a request's server span and its publish span
// carry the semantic-convention attributes, whatever the protocol.
func TestProtocolSeamSpans(t *testing.T) {
	h := start(t, nil)
	h.svc.register(fakePath, &fakeProtocol{})
	resp, err := h.sendRaw(http.MethodPost, fakePath, map[string]string{"Fake-Tenant": "acme"}, strings.NewReader("u1 click\nu2 view"))
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, resp.status, resp.body)

	attrs := func(s sdktrace.ReadOnlySpan) map[string]string {
		out := map[string]string{}
		for _, kv := range s.Attributes() {
			out[string(kv.Key)] = kv.Value.Emit()
		}
		return out
	}
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		got := map[string]map[string]string{}
		for _, s := range h.spans.Ended() {
			got[s.Name()] = attrs(s)
		}
		assert.Equal(c, map[string]map[string]string{
			"POST " + fakePath: {"http.request.method": "POST", "url.path": fakePath, "http.response.status_code": "201"},
			"publish ingest.acme": {"messaging.system": "nats", "messaging.destination.name": "ingest.acme", "messaging.batch.message_count": "2",
				"surge.tenant": "acme", "messaging.nats.stream_sequence": "1", "surge.duplicate": "false"},
		}, got)
	}, 5*time.Second, 10*time.Millisecond)
}
