package ingest

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/telemetry"
)

// ProblemsPath is where a tenant reads the problems of its events.
const ProblemsPath = "/v1/problems"

// Bounds of GET /v1/problems.
const (
	// defaultProblemsSince is how far back an answer looks without since.
	defaultProblemsSince = 24 * time.Hour
	// problemsSamples is the most samples an answer gives per reason.
	problemsSamples = 5
	// problemsReadTimeout bounds reading PROBLEMS for one answer.
	problemsReadTimeout = 10 * time.Second
)

// problemsBody is the answer of GET /v1/problems.
type problemsBody struct {
	Tenant string    `json:"tenant"`
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until"`
	// Truncated says the answer read problems.DefaultReadLimit aggregates
	// and left the rest: ask again with a later since.
	Truncated bool               `json:"truncated"`
	Problems  []problems.Summary `json:"problems"`
}

// fieldErrorBody is the 400 of a bad query parameter, naming it.
type fieldErrorBody struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

// registerProblems serves GET /v1/problems; any other method is answered
// 405.
func (s *Service) registerProblems() {
	s.mux.Handle(http.MethodGet+" "+ProblemsPath, s.endpoint(ProblemsPath, s.serveProblems))
	s.mux.Handle(ProblemsPath, s.endpoint(ProblemsPath, func(_ context.Context, w http.ResponseWriter, r *http.Request) reply {
		w.Header().Set("Allow", http.MethodGet)
		return reject(http.StatusMethodNotAllowed, reasonMethod, "method "+r.Method+" not allowed; use GET")
	}))
}

// serveProblems answers the problems of the request's tenant, authenticated
// as POST /v1/events is, stored since the since parameter: per reason, the
// count, the fields, a few samples and a link to the docs.
func (s *Service) serveProblems(ctx context.Context, _ http.ResponseWriter, r *http.Request) reply {
	tenant, ok := s.authenticate(r)
	if !ok {
		rep := reject(http.StatusUnauthorized, reasonUnauthorized, "missing or invalid API key; send Authorization: Bearer <key>")
		rep.challenge = `Bearer realm="surge"`
		return rep
	}
	until := time.Now().UTC()
	since, ok := parseSince(r.URL.Query().Get("since"), until)
	if !ok {
		rep := reject(http.StatusBadRequest, reasonBadRequest, "since must be an RFC 3339 time or a positive duration such as 1h")
		rep.answer = fieldErrorBody{Error: rep.message, Field: "since"}
		return rep
	}
	release, ok := s.acquire()
	if !ok {
		return reject(http.StatusTooManyRequests, reasonOverloaded, "too many requests in flight; retry later")
	}
	defer release()
	conn := s.conn.Load()
	if conn == nil || !conn.NC.IsConnected() {
		return reject(http.StatusServiceUnavailable, reasonUnavailable, "problem store unavailable; retry later")
	}
	rctx, cancel := context.WithTimeout(ctx, problemsReadTimeout)
	defer cancel()
	aggs, truncated, err := problems.Read(rctx, conn.JS, problems.Query{Tenant: tenant, Since: since, Until: until})
	if err != nil {
		s.logger.Warn("read problems", append(telemetry.TraceFields(ctx), zap.String("tenant", tenant), zap.Error(err))...)
		return reject(http.StatusServiceUnavailable, reasonUnavailable, "problem store unavailable; retry later")
	}
	body := problemsBody{Tenant: tenant, Since: since, Until: until, Truncated: truncated, Problems: problems.Fold(aggs, problemsSamples)}
	return reply{status: http.StatusOK, answer: body}
}

// parseSince reads since: an RFC 3339 time, or a positive duration back
// from now; empty is defaultProblemsSince.
func parseSince(v string, now time.Time) (time.Time, bool) {
	if v == "" {
		return now.Add(-defaultProblemsSince), true
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UTC(), true
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), true
	}
	return time.Time{}, false
}

// recordInvalid records the problems of the items a request dead-lettered,
// each under its messageId.
func (s *Service) recordInvalid(tenant string, invalid []invalidItem) {
	for _, it := range invalid {
		id := problems.ID(it.data, "messageId")
		for _, p := range it.problems {
			reason, field, sample := problems.FromEvent(p, id, it.data)
			s.host.Problems.Add(tenant, reason, field, sample)
		}
	}
}

// recordUnauthorized records a request whose key named no tenant, under
// problems.Unknown, which only operators read.
func (s *Service) recordUnauthorized(r *http.Request) {
	s.host.Problems.Add(problems.Unknown, problems.ReasonUnauthorized, "", problems.Sample{
		Detail: r.Method + " " + r.URL.Path + " from " + r.RemoteAddr,
	})
}
