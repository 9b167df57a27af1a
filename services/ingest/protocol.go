package ingest

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/telemetry"
)

// protocol is one wire format of the event API: Surge's own (events.go)
// and Segment's Tracking API (segmenthttp.go). The service runs what every
// format shares: an in-flight slot, the Idempotency-Key, the body read
// within its limits, one INGEST message for the valid events, a dead
// letter for each item stored apart, the JSON error bodies, and each
// request's span and metrics. A protocol says only what differs: where
// its credentials are, how its body becomes events, and how a stored
// request is answered. register puts it on its paths.
type protocol interface {
	// authorize checks the request's headers before its body is read:
	// its credentials, and its content type where the format names one.
	// A format that also takes credentials from the body returns tenant
	// "" when the headers have none, for decode to authenticate.
	authorize(r *http.Request) (tenant string, rep reply)
	// decode turns an admitted body into what to store, or the reply
	// that refuses the whole request.
	decode(r *http.Request, body []byte, tenant string) (decoded, reply)
	// answer is the status and JSON body of a request once stored.
	answer(stored) (status int, body any)
}

// decoded is what a protocol read from a request's body.
type decoded struct {
	// tenant owns the events: authorize's, or the one decode
	// authenticated by the body.
	tenant string
	// events are the valid events, stored as one INGEST message.
	events []event.Event
	// msgID is the Nats-Msg-Id the content gives (see streams.IngestMsg),
	// "" for none; an Idempotency-Key, when sent, is used instead.
	msgID string
	// items is how many items the request held, valid or not.
	items int
	// size is the body's bytes when the protocol read more of it than
	// admit held (a streamed Segment batch); 0 when the body is all.
	size int
	// partial says the format stores a request's valid items and
	// dead-letters the others (invalid) rather than refuse it whole:
	// Segment's SDKs drop a whole batch answered 400.
	partial bool
	invalid []invalidItem
}

// invalidItem is one item of a request dead-lettered on its own.
type invalidItem struct {
	// index is its position in the request.
	index int
	// data is the item as it was sent.
	data     []byte
	problems []event.Problem
}

// stored is what a request stored, for its protocol's answer.
type stored struct {
	// events is how many events were stored; duplicate says JetStream
	// had them already (a retry within the duplicate window).
	events    int
	duplicate bool
}

// routes registers every protocol on s.mux, and the 404 of every other
// path.
func (s *Service) routes() {
	s.register(EventsPath, eventsAPI{s: s})
	for path, call := range segmentRoutes {
		s.register(path, segmentAPI{s: s, call: call})
	}
	s.registerProblems()
	s.registerErasure()
	s.mux.Handle("/", s.endpoint("", notFound))
}

// register serves p on path: POST is p's, any other method is answered 405.
func (s *Service) register(path string, p protocol) {
	s.mux.Handle(http.MethodPost+" "+path, s.endpoint(path, func(ctx context.Context, w http.ResponseWriter, r *http.Request) reply {
		return s.handle(ctx, w, r, p)
	}))
	s.mux.Handle(path, s.endpoint(path, methodNotAllowed))
}

// ServeHTTP routes a request on its decoded path, exactly as registered.
// http.ServeMux alone would answer a path it cleans (/v1//events) with a
// redirect, which is no answer to a POST, and would not decode an escaped
// slash (/v1%2Fevents) before matching; ingest answers the first 404 and
// routes the second by its decoded path, as it did before the mux.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != cleanPath(r.URL.Path) {
		s.endpoint("", notFound).ServeHTTP(w, r)
		return
	}
	if r.URL.RawPath != "" {
		u := *r.URL
		u.RawPath = ""
		r = r.WithContext(r.Context()) // a shallow copy, to route on u
		r.URL = &u
	}
	s.mux.ServeHTTP(w, r)
}

// cleanPath is the path http.ServeMux routes, which it redirects to when
// it differs from the request's: rooted, without . and .. elements or
// doubled slashes, a trailing slash kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if p[len(p)-1] == '/' && np != "/" {
		np += "/"
	}
	return np
}

// handleFunc answers one request of a route with a reply, for endpoint to
// write.
type handleFunc func(ctx context.Context, w http.ResponseWriter, r *http.Request) reply

// endpoint wraps h in what every answer shares: the request's server span,
// named "<method> <route>" (just "<method>" off every route), the JSON
// answer, the request metrics and the debug log of a rejection.
func (s *Service) endpoint(route string, h handleFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		name := r.Method
		if route != "" {
			name += " " + route
		}
		ctx, span := s.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
			semconv.HTTPRequestMethodKey.String(r.Method),
			semconv.URLPath(r.URL.Path),
		))
		defer span.End()

		rep := h(ctx, w, r)
		s.write(w, rep)

		span.SetAttributes(semconv.HTTPResponseStatusCode(rep.status))
		if rep.status >= 500 {
			span.SetStatus(codes.Error, rep.message)
		}
		m := s.metrics
		m.requests.WithLabelValues(strconv.Itoa(rep.status)).Inc()
		m.requestDuration.Observe(time.Since(start).Seconds())
		if rep.status < 300 {
			m.eventsAccepted.Add(float64(rep.accepted))
			return
		}
		m.requestsRejected.WithLabelValues(rep.reason).Inc()
		if rep.reason == reasonUnauthorized {
			s.recordUnauthorized(r)
		}
		if rep.events > 0 {
			m.eventsRejected.WithLabelValues(rep.reason).Add(float64(rep.events))
		}
		if rep.status < 500 {
			s.logger.Debug("request rejected", append(telemetry.TraceFields(ctx),
				zap.Int("status", rep.status), zap.String("reason", rep.reason), zap.String("error", rep.message))...)
		}
	})
}

// handle handles a POST to one of p's paths: p authorizes it, admission
// takes a slot and reads the body, p decodes it, the valid events are
// published as one INGEST message and the invalid items of a partial
// format are dead-lettered, and p answers once JetStream acked them all.
func (s *Service) handle(ctx context.Context, w http.ResponseWriter, r *http.Request, p protocol) reply {
	tenant, rep := p.authorize(r)
	if rep.status != 0 {
		return rep
	}
	// A tenant whose quota is spent, or that holds its share of the
	// in-flight slots, is refused before its body is read.
	if tenant != "" {
		if q := s.quotas.Check(tenant); !q.Allowed {
			return s.overQuota(tenant, q, 0)
		}
		releaseTenant, ok := s.perTenant.acquire(tenant)
		if !ok {
			return reject(http.StatusTooManyRequests, reasonOverloaded, fmt.Sprintf(
				"tenant %s has %d requests in flight, its most; retry later", tenant, s.cfg.Ingest.MaxInFlightPerTenant))
		}
		defer releaseTenant()
	}
	body, idemKey, release, rep := s.admit(w, r, p)
	if rep.status != 0 {
		return rep
	}
	defer release()
	d, rep := p.decode(r, body, tenant)
	if rep.status != 0 {
		return rep
	}
	d.events = s.dropErased(d.tenant, d.events)
	if idemKey != "" {
		d.msgID = d.tenant + ":" + idemKey
	}
	// The quota takes the request whole or refuses it: a request over
	// quota stores nothing.
	size := max(len(body), d.size)
	quota := s.quotas.Take(d.tenant, len(d.events), size)
	if !quota.Allowed {
		return s.overQuota(d.tenant, quota, d.items)
	}

	var done stored
	if len(d.events) > 0 {
		dup, rep := s.publish(ctx, d.tenant, d.msgID, d.events)
		if rep.status != 0 {
			s.quotas.Refund(d.tenant, len(d.events), size)
			rep.quota = quota
			return rep
		}
		done = stored{events: len(d.events), duplicate: dup}
	}
	if d.partial {
		n, err := s.deadLetter(ctx, d.tenant, d.msgID, d.invalid)
		if err != nil {
			rep := publishReject(err, s.cfg.Ingest.PublishTimeout)
			rep.events = d.items
			s.logger.Warn("dead-letter messages", append(telemetry.TraceFields(ctx), zap.String("tenant", d.tenant), zap.Error(err))...)
			return rep
		}
		s.metrics.eventsRejected.WithLabelValues(reasonInvalid).Add(float64(n))
		s.recordInvalid(d.tenant, d.invalid)
	}
	status, answer := p.answer(done)
	return reply{status: status, accepted: done.events, answer: answer, quota: quota}
}

func notFound(context.Context, http.ResponseWriter, *http.Request) reply {
	return reject(http.StatusNotFound, reasonNotFound, "no such path; events go to POST "+EventsPath)
}

func methodNotAllowed(_ context.Context, w http.ResponseWriter, r *http.Request) reply {
	w.Header().Set("Allow", http.MethodPost)
	return reject(http.StatusMethodNotAllowed, reasonMethod, "method "+r.Method+" not allowed; use POST")
}
