package ingest

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/tenants"
)

// reply is the outcome of one request.
type reply struct {
	status int
	// answer is the JSON body of a stored request (its protocol's);
	// accepted is how many events it stored.
	answer   any
	accepted int
	// message and problems answer an error, the same way for every
	// protocol (errorBody); challenge is the WWW-Authenticate of a 401.
	message   string
	problems  []event.Problem
	challenge string
	// reason labels a rejection in the metrics; events is how many events
	// the rejected request held, when known.
	reason string
	events int
	// quota is the tenant's quota decision, for the RateLimit-* headers.
	quota tenants.Decision
}

func reject(status int, reason, message string) reply {
	return reply{status: status, reason: reason, message: message}
}

// errorBody is every protocol's answer to a request it refuses: what is
// wrong, and the problem of each field of each event where there are some.
type errorBody struct {
	Error    string          `json:"error"`
	Problems []event.Problem `json:"problems,omitempty"`
}

// write answers rep as JSON: its protocol's answer, or the errorBody of a
// refusal, which asks clients of a 429 or 503 to retry after RetryAfter.
func (s *Service) write(w http.ResponseWriter, rep reply) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if rep.challenge != "" {
		h.Set("WWW-Authenticate", rep.challenge)
	}
	switch {
	case rep.quota.Limited:
		quotaHeaders(h, rep.quota, rep.reason == reasonOverQuota)
	case rep.status == http.StatusTooManyRequests || rep.status == http.StatusServiceUnavailable:
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(s.cfg.Ingest.RetryAfter.Seconds()))))
	}
	body := rep.answer
	if body == nil {
		body = errorBody{Error: rep.message, Problems: rep.problems}
	}
	w.WriteHeader(rep.status)
	_ = json.NewEncoder(w).Encode(body) // a failed write means the client left
}
