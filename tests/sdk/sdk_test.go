package sdk

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/services/ingest"
)

var sdks = []string{"segment", "rudder"}

// TestSDKs drives each SDK through the cases of one shared pipeline, each
// case under its own tenant.
func TestSDKs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, ClickHouse and node")
	}
	sdkDir(t) // install first, so no case's time includes npm
	var tenants []string
	for _, sdk := range sdks {
		for _, c := range []string{"calls", "invalid", "overload", "outage", "lost", "quota"} {
			tenants = append(tenants, sdk+"-"+c)
		}
	}
	p := startPipeline(t, append(tenants, "http")...)

	for _, sdk := range sdks {
		t.Run(sdk, func(t *testing.T) {
			t.Run("every call lands once with its fields, clock an hour fast", func(t *testing.T) { testCalls(t, p, sdk) })
			t.Run("an invalid message is dead-lettered, the rest stored", func(t *testing.T) { testInvalid(t, p, sdk) })
			t.Run("a burst through 429s lands once", func(t *testing.T) { testOverload(t, p, sdk) })
			t.Run("a burst through 503s lands once", func(t *testing.T) { testOutage(t, p, sdk) })
			t.Run("a burst whose answers are lost lands once", func(t *testing.T) { testLostAnswers(t, p, sdk) })
			t.Run("a burst over its tenant's quota lands once", func(t *testing.T) { testQuota(t, p, sdk) })
			t.Run("a wrong write key stores nothing", func(t *testing.T) { testWrongKey(t, p, sdk) })
		})
	}
	t.Run("auth forms and bodies", func(t *testing.T) { testHTTP(t, p) })
}

func testCalls(t *testing.T, p *pipeline, sdk string) {
	tenant := sdk + "-calls"
	id := func(call string) string { return sdk + "-" + call }
	msgs := []map[string]any{
		{"type": "track", "messageId": id("track"), "userId": "u-1", "event": "Order Completed",
			"properties": map[string]any{"total": 9.5, "currency": "EUR"}},
		{"type": "identify", "messageId": id("identify"), "userId": "u-1", "traits": map[string]any{"plan": "pro"}},
		{"type": "page", "messageId": id("page"), "anonymousId": "anon-1", "name": "Home", "properties": map[string]any{"path": "/"}},
		{"type": "screen", "messageId": id("screen"), "userId": "u-2", "name": "Cart", "properties": map[string]any{"items": 3.0}},
		{"type": "group", "messageId": id("group"), "userId": "u-2", "groupId": "g-1", "traits": map[string]any{"seats": 10.0}},
		{"type": "alias", "messageId": id("alias"), "userId": "u-3", "previousId": "anon-1"},
	}
	start := time.Now().UTC()
	o := send(t, job{SDK: sdk, Host: p.st.IngestURL, WriteKey: writeKey(tenant), Messages: msgs, FlushAt: 6, ClockOffsetMs: time.Hour.Milliseconds()})
	end := time.Now().UTC()
	require.Equal(t, outcome{Delivered: 6, Errors: []string{}}, o)

	want := map[string]struct {
		user, typ string
		props     map[string]any
		segment   map[string]any // fields expected under _segment
	}{
		id("track"):    {"u-1", "Order Completed", map[string]any{"total": 9.5, "currency": "EUR"}, nil},
		id("identify"): {"u-1", "$identify", map[string]any{"plan": "pro"}, nil},
		id("page"):     {"anon-1", "$page", map[string]any{"path": "/"}, map[string]any{"name": "Home"}},
		id("screen"):   {"u-2", "$screen", map[string]any{"items": 3.0}, map[string]any{"name": "Cart"}},
		id("group"):    {"u-2", "$group", map[string]any{"seats": 10.0}, map[string]any{"groupId": "g-1"}},
		id("alias"):    {"u-3", "$alias", map[string]any{}, map[string]any{"previousId": "anon-1"}},
	}
	rows := p.rows(t, tenant)
	require.Len(t, rows, len(want))
	for eventID, w := range want {
		r, ok := rows[eventID]
		require.True(t, ok, "%s not stored", eventID)
		require.Equal(t, w.user, r.UserID, eventID)
		require.Equal(t, w.typ, r.Type, eventID)
		seg, ok := r.Properties["_segment"].(map[string]any)
		require.True(t, ok, "%s: no _segment in %v", eventID, r.Properties)
		delete(r.Properties, "_segment")
		require.Equal(t, w.props, r.Properties, eventID)
		for k, v := range w.segment {
			require.Equal(t, v, seg[k], "%s: _segment.%s", eventID, k)
		}
		for _, k := range []string{"messageId", "userId", "writeKey", "_metadata", "type", "event", "properties", "traits"} {
			require.NotContains(t, seg, k, "%s: mapped or dropped", eventID)
		}
		lib := seg["context"].(map[string]any)["library"].(map[string]any)
		require.Contains(t, lib["name"], "analytics-node", eventID)

		// The client's clock is an hour fast; ts is the server's time.
		require.False(t, r.TS.Before(start.Truncate(time.Second)), "%s: ts %s before the run began %s", eventID, r.TS, start)
		require.False(t, r.TS.After(end), "%s: ts %s after the run ended %s", eventID, r.TS, end)
		raw, _ := seg["timestamp"].(string) // Segment's
		if raw == "" {
			raw, _ = seg["originalTimestamp"].(string) // RudderStack's
		}
		clientTS, err := time.Parse(time.RFC3339Nano, raw)
		require.NoError(t, err, "%s: raw client time kept", eventID)
		require.InDelta(t, time.Hour.Seconds(), clientTS.Sub(r.TS).Seconds(), 5, "%s: client sent %s", eventID, raw)
	}
}

func testInvalid(t *testing.T, p *pipeline, sdk string) {
	tenant := sdk + "-invalid"
	long := strings.Repeat("x", 200) // the SDKs allow it; Surge's type is at most 128 characters
	var msgs []map[string]any
	for i := range 5 {
		name := "ok"
		if i == 2 {
			name = long
		}
		msgs = append(msgs, map[string]any{"type": "track", "messageId": fmt.Sprintf("%s-inv-%d", sdk, i), "userId": "u", "event": name})
	}
	o := send(t, job{SDK: sdk, Host: p.st.IngestURL, WriteKey: writeKey(tenant), Messages: msgs, FlushAt: 5})
	require.Equal(t, outcome{Delivered: 5, Errors: []string{}}, o, "the SDK sees its batch accepted")

	rows := p.rows(t, tenant)
	require.ElementsMatch(t, []string{sdk + "-inv-0", sdk + "-inv-1", sdk + "-inv-3", sdk + "-inv-4"}, keys(rows))
	dls := p.deadLetters(t, tenant)
	require.Len(t, dls, 1)
	require.Contains(t, string(dls[0].Data), `"messageId":"`+sdk+`-inv-2"`)
	require.Equal(t, "event: longer than 128 characters", dls[0].Header.Get(streams.HeaderReason))
	require.Equal(t, tenant, dls[0].Header.Get(streams.HeaderTenant))
}

// burst is n tracks with known message ids.
func burst(sdk, name string, n int) ([]map[string]any, []string) {
	msgs := make([]map[string]any, n)
	ids := make([]string, n)
	for i := range msgs {
		ids[i] = fmt.Sprintf("%s-%s-%05d", sdk, name, i)
		msgs[i] = map[string]any{"type": "track", "messageId": ids[i], "userId": fmt.Sprintf("u-%d", i%97),
			"event": "Burst", "properties": map[string]any{"i": i}}
	}
	return msgs, ids
}

// flushAt is how many messages each SDK puts in one request of a burst:
// Segment sends each full batch at once, RudderStack one request at a time.
var flushAt = map[string]int{"segment": 500, "rudder": 100}

// testOverload sends a burst through an ingest whose every in-flight slot
// is held by a slow request, so it answers 429 with Retry-After until the
// test lets the slots go once the SDK has been refused twice.
func testOverload(t *testing.T, p *pipeline, sdk string) {
	tenant := sdk + "-overload"
	const slots = 8
	svc, reg := p.startIngest(t, func(c *ingest.Config) { c.Ingest.MaxInFlight = slots })
	var held []net.Conn
	for range slots {
		c, err := net.Dial("tcp", svc.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		_, err = fmt.Fprintf(c, "POST /v1/events HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer %s\r\n"+
			"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[", writeKey(tenant))
		require.NoError(t, err)
		held = append(held, c)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := metric(reg, "surge_ingest_in_flight", nil)
		if assert.NoError(c, err) {
			assert.Equal(c, float64(slots), n)
		}
	}, 10*time.Second, 10*time.Millisecond)

	msgs, ids := burst(sdk, "overload", 2000)
	wait := sendInBackground(t, job{SDK: sdk, Host: "http://" + svc.Addr(), WriteKey: writeKey(tenant), Messages: msgs, FlushAt: flushAt[sdk]})
	untilAnswered(t, reg, "429", 2)
	for _, c := range held {
		require.NoError(t, c.Close())
	}
	require.Equal(t, outcome{Delivered: len(ids), Errors: []string{}}, wait())
	t.Logf("%s: %.0f requests answered 429", sdk, answered(t, reg, "429"))

	rows := p.rows(t, tenant)
	require.ElementsMatch(t, ids, keys(rows))
}

// testOutage sends a burst through an ingest whose link to NATS is cut,
// so it answers 503 with Retry-After, until the SDK has been refused
// twice; then the link comes back and ingest reconnects.
func testOutage(t *testing.T, p *pipeline, sdk string) {
	tenant := sdk + "-outage"
	link := startSwitchProxy(t, strings.TrimPrefix(p.st.NATS.ClientURL(), "nats://"))
	svc, reg := p.startIngest(t, func(c *ingest.Config) { c.NATS.URL = "nats://" + link.Addr() })
	link.Cut()

	msgs, ids := burst(sdk, "outage", 2000)
	wait := sendInBackground(t, job{SDK: sdk, Host: "http://" + svc.Addr(), WriteKey: writeKey(tenant), Messages: msgs, FlushAt: flushAt[sdk]})
	untilAnswered(t, reg, "503", 2)
	link.Restore()
	require.Equal(t, outcome{Delivered: len(ids), Errors: []string{}}, wait())
	t.Logf("%s: %.0f requests answered 503", sdk, answered(t, reg, "503"))

	rows := p.rows(t, tenant)
	require.ElementsMatch(t, ids, keys(rows))
}

// testLostAnswers puts a proxy between the SDK and ingest that forwards
// each request and drops the first three answers: the events are stored,
// the SDK sees a reset connection and sends the batch again.
func testLostAnswers(t *testing.T, p *pipeline, sdk string) {
	tenant := sdk + "-lost"
	proxy := startDropper(t, strings.TrimPrefix(p.st.IngestURL, "http://"), 3)
	msgs, ids := burst(sdk, "lost", 1000)
	plain := false // RudderStack's other body: JSON, not gzip
	o := send(t, job{SDK: sdk, Host: proxy.URL(), WriteKey: writeKey(tenant), Messages: msgs, FlushAt: 100, Gzip: &plain})
	require.Equal(t, outcome{Delivered: len(ids), Errors: []string{}}, o)
	require.EqualValues(t, 3, proxy.dropped.Load())

	rows := p.rows(t, tenant)
	require.ElementsMatch(t, ids, keys(rows))
}

func testWrongKey(t *testing.T, p *pipeline, sdk string) {
	reg := p.st.Part("ingest").Registry
	before, err := metric(reg, "surge_ingest_requests_total", map[string]string{"code": "401"})
	require.NoError(t, err)
	seq := p.ingestSeq(t)
	msgs, _ := burst(sdk, "wrongkey", 3)
	o := send(t, job{SDK: sdk, Host: p.st.IngestURL, WriteKey: "wk-nobody", Messages: msgs, FlushAt: 3})
	require.Zero(t, o.Delivered)
	require.Equal(t, 3, o.Failed, "the SDK gives up at once: %v", o.Errors)
	after, err := metric(reg, "surge_ingest_requests_total", map[string]string{"code": "401"})
	require.NoError(t, err)
	require.Greater(t, after, before)
	require.Equal(t, seq, p.ingestSeq(t), "nothing stored")
}

// testHTTP sends what the curl examples of docs/sdks.md send: the three auth
// forms and the bodies browsers and SDKs label in different ways.
func testHTTP(t *testing.T, p *pipeline) {
	key := writeKey("http")
	gz := func(s string) io.Reader {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		require.NoError(t, zw.Close())
		return &b
	}
	msg := func(id string) string {
		return `{"type":"track","event":"Curl","userId":"u","messageId":"` + id + `","timestamp":"2026-05-01T10:00:00Z"}`
	}
	basicAuth := "Basic " + base64.StdEncoding.EncodeToString([]byte(key+":"))
	tests := []struct {
		id, path string
		headers  map[string]string
		body     io.Reader
	}{
		{"basic", "/v1/batch", map[string]string{"Authorization": basicAuth, "Content-Type": "application/json"},
			strings.NewReader(`{"batch":[` + msg("basic") + `]}`)},
		{"bearer", "/v1/batch", map[string]string{"Authorization": "Bearer " + key, "Content-Type": "application/json"},
			strings.NewReader(`{"batch":[` + msg("bearer") + `]}`)},
		{"body-key", "/v1/batch", map[string]string{"Content-Type": "application/json"},
			strings.NewReader(`{"writeKey":"` + key + `","batch":[` + msg("body-key") + `]}`)},
		{"text-plain", "/v1/t", map[string]string{"Content-Type": "text/plain"},
			strings.NewReader(strings.TrimSuffix(msg("text-plain"), "}") + `,"writeKey":"` + key + `"}`)},
		{"form-gzip", "/v1/batch", map[string]string{"Authorization": basicAuth,
			"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
			gz(`{"batch":[` + msg("form-gzip") + `]}`)},
	}
	for _, tt := range tests {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, p.st.IngestURL+tt.path, tt.body)
		require.NoError(t, err)
		for k, v := range tt.headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", tt.id, body)
		require.Equal(t, `{"success":true}`+"\n", string(body), tt.id)
	}
	rows := p.rows(t, "http")
	require.ElementsMatch(t, []string{"basic", "bearer", "body-key", "text-plain", "form-gzip"}, keys(rows))
	for id, r := range rows {
		require.Equal(t, "Curl", r.Type, id)
		require.Equal(t, time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC), r.TS, "%s: no sentAt, timestamp kept", id)
	}
}

func keys(rows map[string]row) []string {
	out := make([]string, 0, len(rows))
	for k := range rows {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
