package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/problems"
)

// getProblems GETs /v1/problems with query and key ("" for none) and
// returns the status and the raw body.
func (h *harness) getProblems(query, key string) (int, string) {
	h.t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+h.svc.Addr()+ProblemsPath+query, nil)
	require.NoError(h.t, err)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := h.client.Do(req)
	require.NoError(h.t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(h.t, err)
	require.Equal(h.t, "application/json", resp.Header.Get("Content-Type"))
	return resp.StatusCode, string(raw)
}

// problemsOf is the answer of GET /v1/problems for key, decoded.
func (h *harness) problemsOf(key string) problemsBody {
	h.t.Helper()
	code, raw := h.getProblems("?since=1h", key)
	require.Equal(h.t, http.StatusOK, code, raw)
	var body problemsBody
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	require.NoError(h.t, dec.Decode(&body), raw)
	return body
}

// flushProblems publishes what the service recorded so far: a request's
// problems are recorded before it is answered.
func (h *harness) flushProblems() {
	h.t.Helper()
	_, err := h.svc.host.Problems.Flush(h.t.Context(), h.js)
	require.NoError(h.t, err)
}

// invalidBatch is a Segment batch of one valid track and n tracks without
// an event name, messageIds <prefix>0 to <prefix>n-1.
func invalidBatch(n int, prefix string) string {
	msgs := []string{`{"type":"track","event":"ok","userId":"u","messageId":"` + prefix + `ok"}`}
	for i := range n {
		msgs = append(msgs, fmt.Sprintf(`{"type":"track","userId":"u","messageId":"%s%d"}`, prefix, i))
	}
	return `{"batch":[` + strings.Join(msgs, ",") + `]}`
}

// TestProblemsOfDeadLetteredSegmentMessages: a tenant sees exactly its own
// dead-lettered messages, by reason and field, with samples naming them.
func TestProblemsOfDeadLetteredSegmentMessages(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.APIKeys = map[string]string{"key-a": "a", "key-b": "b"} })
	const n, m = 7, 2
	for _, r := range []struct {
		key, body string
	}{
		{"key-a", invalidBatch(4, "a-")},
		{"key-a", invalidBatch(n-4, "a2-")},
		{"key-b", invalidBatch(m, "b-")},
	} {
		code, _, body := h.segmentPost("/v1/batch", map[string]string{"Authorization": basic(r.key)}, strings.NewReader(r.body))
		require.Equal(t, http.StatusOK, code, body)
		h.flushProblems() // an aggregate per request
	}
	// Two requests with keys that name no tenant.
	for _, key := range []string{"nope", ""} {
		code, _, _ := h.segmentPost("/v1/batch", map[string]string{"Authorization": basic(key)}, strings.NewReader(invalidBatch(1, "x-")))
		require.Equal(t, http.StatusUnauthorized, code)
	}
	h.flushProblems()

	a := h.problemsOf("key-a")
	require.Equal(t, "a", a.Tenant)
	require.False(t, a.Truncated)
	require.WithinDuration(t, time.Now(), a.Until, time.Minute)
	require.Equal(t, time.Hour, a.Until.Sub(a.Since))
	require.Len(t, a.Problems, 1, "%+v", a.Problems)
	got := a.Problems[0]
	require.Equal(t, problems.ReasonMissingField, got.Reason)
	require.Equal(t, int64(n), got.Count)
	require.Equal(t, []problems.FieldCount{{Field: "event", Count: n}}, got.Fields)
	require.Equal(t, problems.DocsPage+"#missing_field", got.Docs)
	var ids []string
	for _, s := range got.Samples {
		ids = append(ids, s.ID)
		require.Equal(t, "required for track, a non-empty string", s.Detail)
		require.True(t, strings.HasPrefix(s.Excerpt, `{"type":"track"`), s.Excerpt)
	}
	// An aggregate keeps its first 3 samples, an answer 5: the first
	// request's first 3, then the second's (one request's problems may be
	// split by a flush, so which of the rest is not fixed), in the order
	// they were sent.
	require.Len(t, ids, 5)
	require.Equal(t, []string{"a-0", "a-1", "a-2"}, ids[:3])
	sent := []string{"a-0", "a-1", "a-2", "a-3", "a2-0", "a2-1", "a2-2"}
	at := 0
	for _, id := range ids {
		for at < len(sent) && sent[at] != id {
			at++
		}
		require.Less(t, at, len(sent), "%s is a sample of a's, in order: %v", id, ids)
	}

	b := h.problemsOf("key-b")
	require.Equal(t, "b", b.Tenant)
	require.Len(t, b.Problems, 1)
	require.Equal(t, int64(m), b.Problems[0].Count, "b sees its own only")
	require.Equal(t, "b-0", b.Problems[0].Samples[0].ID)

	// Unknown keys are recorded where only operators look.
	aggs, _, err := problems.Read(t.Context(), h.js, problems.Query{Tenant: problems.Unknown, Since: time.Now().Add(-time.Hour)})
	require.NoError(t, err)
	var unknown int64
	for _, agg := range aggs {
		require.Equal(t, problems.ReasonUnauthorized, agg.Reason)
		unknown += agg.Count
	}
	require.Equal(t, int64(2), unknown)
}

func TestProblemsQuery(t *testing.T) {
	h := start(t, func(c *Config) { c.Ingest.APIKeys = map[string]string{"key-a": "a"} })
	for _, tt := range []struct {
		name, query string
		code        int
	}{
		{"a duration", "?since=30m", http.StatusOK},
		{"a time", "?since=" + time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), http.StatusOK},
		{"the default", "", http.StatusOK},
		{"not a time", "?since=yesterday", http.StatusBadRequest},
		{"a negative duration", "?since=-1h", http.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, raw := h.getProblems(tt.query, "key-a")
			require.Equal(t, tt.code, code, raw)
			if code == http.StatusBadRequest {
				require.JSONEq(t, `{"error":"since must be an RFC 3339 time or a positive duration such as 1h","field":"since"}`, raw)
				return
			}
			require.Contains(t, raw, `"problems":[]`, "none yet, and a list")
		})
	}
	code, _ := h.getProblems("", "")
	require.Equal(t, http.StatusUnauthorized, code, "authenticated as POST /v1/events")
	code, _ = h.getProblems("", "key-b")
	require.Equal(t, http.StatusUnauthorized, code)
	resp, err := h.client.Post("http://"+h.svc.Addr()+ProblemsPath, "application/json", bytes.NewBufferString("{}"))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	require.Equal(t, http.MethodGet, resp.Header.Get("Allow"))
}

// TestProblemsWithoutAPIKeys: with no keys configured, the default tenant
// reads its problems without one.
func TestProblemsWithoutAPIKeys(t *testing.T) {
	h := start(t, nil)
	code, _, body := h.segmentPost("/v1/batch", nil, strings.NewReader(invalidBatch(3, "d-")))
	require.Equal(t, http.StatusOK, code, body)
	h.flushProblems()
	got := h.problemsOf("")
	require.Equal(t, "default", got.Tenant)
	require.Len(t, got.Problems, 1)
	require.Equal(t, int64(3), got.Problems[0].Count)
}

// TestProblemsStoreIsBounded: past streams.problems_max_per_tenant
// aggregates, a tenant's oldest go.
func TestProblemsStoreIsBounded(t *testing.T) {
	h := start(t, func(c *Config) { c.Streams.ProblemsMaxPerTenant = 5 })
	for i := range 8 {
		h.svc.host.Problems.Add("default", problems.ReasonUnknownField, fmt.Sprintf("f%d", i), problems.Sample{})
		h.flushProblems() // one aggregate each
	}
	got := h.problemsOf("")
	require.Len(t, got.Problems, 1)
	require.Equal(t, int64(5), got.Problems[0].Count, "the 5 newest aggregates are kept")
	var fields []string
	for _, f := range got.Problems[0].Fields {
		fields = append(fields, f.Field)
	}
	require.Equal(t, []string{"f3", "f4", "f5", "f6", "f7"}, fields)
}
