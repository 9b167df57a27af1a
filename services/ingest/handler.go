package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// EventsPath is where clients post events.
const EventsPath = "/v1/events"

// HeaderIdempotencyKey names the request header whose value becomes the
// JetStream message id, so a client retry within the duplicate window is
// stored once.
const HeaderIdempotencyKey = "Idempotency-Key"

// maxIdempotencyKeyLen bounds the key, which travels in every message id.
const maxIdempotencyKeyLen = 200

// reply is the outcome of one request.
type reply struct {
	status int
	// accepted and duplicate answer a 202.
	accepted  int
	duplicate bool
	// message and problems answer an error.
	message  string
	problems []event.Problem
	// reason labels a rejection in the metrics; events is how many events
	// the rejected request held, when known.
	reason string
	events int
}

func reject(status int, reason, message string) reply {
	return reply{status: status, reason: reason, message: message}
}

type acceptedBody struct {
	Accepted  int  `json:"accepted"`
	Duplicate bool `json:"duplicate,omitempty"`
}

type errorBody struct {
	Error    string          `json:"error"`
	Problems []event.Problem `json:"problems,omitempty"`
}

// ServeHTTP routes POST /v1/events and the paths of Segment's API
// (segmentRoutes) and answers everything else with JSON 404 or 405.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	name := r.Method
	call, segment := segmentRoutes[r.URL.Path]
	if r.URL.Path == EventsPath || segment {
		name += " " + r.URL.Path
	}
	ctx, span := s.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("http.request.method", r.Method),
		attribute.String("url.path", r.URL.Path),
	))
	defer span.End()

	var rep reply
	switch {
	case r.URL.Path != EventsPath && !segment:
		rep = reject(http.StatusNotFound, reasonNotFound, "no such path; events go to POST "+EventsPath)
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", http.MethodPost)
		rep = reject(http.StatusMethodNotAllowed, reasonMethod, "method "+r.Method+" not allowed; use POST")
	case segment:
		rep = s.serveSegment(ctx, w, r, call)
	default:
		rep = s.ingest(ctx, w, r)
	}
	s.write(w, rep)

	span.SetAttributes(attribute.Int("http.response.status_code", rep.status))
	if rep.status >= 500 {
		span.SetStatus(codes.Error, rep.message)
	}
	m := s.metrics
	m.requests.WithLabelValues(strconv.Itoa(rep.status)).Inc()
	m.requestDuration.Observe(time.Since(start).Seconds())
	if rep.status < 300 {
		m.eventsAccepted.Add(float64(rep.accepted))
	} else {
		m.requestsRejected.WithLabelValues(rep.reason).Inc()
		if rep.events > 0 {
			m.eventsRejected.WithLabelValues(rep.reason).Add(float64(rep.events))
		}
		if rep.status < 500 {
			s.logger.Debug("request rejected", append(telemetry.TraceFields(ctx),
				zap.Int("status", rep.status), zap.String("reason", rep.reason), zap.String("error", rep.message))...)
		}
	}
}

func (s *Service) write(w http.ResponseWriter, rep reply) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if rep.status == http.StatusTooManyRequests || rep.status == http.StatusServiceUnavailable {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(s.cfg.Ingest.RetryAfter.Seconds()))))
	}
	var body any = errorBody{Error: rep.message, Problems: rep.problems}
	switch rep.status {
	case http.StatusAccepted:
		body = acceptedBody{Accepted: rep.accepted, Duplicate: rep.duplicate}
	case http.StatusOK: // Segment's answer
		body = successBody{Success: true}
	}
	w.WriteHeader(rep.status)
	_ = json.NewEncoder(w).Encode(body) // a failed write means the client left
}

// ingest handles one POST: authenticate, check the body's type, admit it
// (an in-flight slot, the body read), validate the body, publish, and
// answer once JetStream acked.
func (s *Service) ingest(ctx context.Context, w http.ResponseWriter, r *http.Request) reply {
	tenant, ok := s.authenticate(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="surge"`)
		return reject(http.StatusUnauthorized, reasonUnauthorized, "missing or invalid API key; send Authorization: Bearer <key>")
	}
	format, ok := bodyFormat(r.Header.Get("Content-Type"))
	if !ok {
		return reject(http.StatusUnsupportedMediaType, reasonMediaType,
			"Content-Type must be application/json, application/x-ndjson or application/ndjson")
	}
	body, idemKey, release, rep := s.admit(w, r)
	if rep.status != 0 {
		return rep
	}
	defer release()

	// Count the ids the parser makes up: a request whose events all carry
	// the client's event_id is identified by its content.
	parser := s.parser
	generated := 0
	parser.NewID = func(t time.Time) string {
		generated++
		return ulid.MustNew(ulid.Timestamp(t), ulid.DefaultEntropy()).String()
	}
	events, err := parser.ParseBytes(body, format, tenant)
	if err != nil {
		return parseReject(err)
	}

	var msgID string
	switch {
	case idemKey != "":
		msgID = tenant + ":" + idemKey
	case generated == 0:
		h := sha256.New()
		h.Write([]byte(tenant))
		h.Write([]byte{0})
		h.Write(body)
		msgID = hex.EncodeToString(h.Sum(nil))
	}
	return s.publish(ctx, tenant, msgID, events)
}

// admit takes the steps of every POST once its tenant is known: an
// in-flight slot (429 when none is free), the Idempotency-Key, the
// Content-Encoding and the body, read within the size limits. It returns
// the body and the key with the slot's release, to call once the request
// is answered; or the reply of the first step that failed, the slot
// already given back.
func (s *Service) admit(w http.ResponseWriter, r *http.Request) (body []byte, idemKey string, release func(), rep reply) {
	release, ok := s.acquire()
	if !ok {
		return nil, "", nil, reject(http.StatusTooManyRequests, reasonOverloaded, "too many requests in flight; retry later")
	}
	if idemKey, rep = idempotencyKey(r); rep.status == 0 {
		if gzipped, ok := bodyEncoding(r.Header.Get("Content-Encoding")); ok {
			body, rep = s.readBody(w, r, gzipped)
		} else {
			rep = reject(http.StatusUnsupportedMediaType, reasonMediaType, "Content-Encoding must be gzip or identity")
		}
	}
	if rep.status != 0 {
		release()
		return nil, "", nil, rep
	}
	return body, idemKey, release, reply{}
}

// acquire takes an in-flight slot, or says at once that none is free.
func (s *Service) acquire() (release func(), ok bool) {
	select {
	case s.slots <- struct{}{}:
		s.metrics.inFlight.Inc()
		return func() {
			<-s.slots
			s.metrics.inFlight.Dec()
		}, true
	default:
		return nil, false
	}
}

// idempotencyKey returns the request's Idempotency-Key ("" when absent),
// or the 400 of an invalid one.
func idempotencyKey(r *http.Request) (string, reply) {
	key := r.Header.Get(HeaderIdempotencyKey)
	if _, present := r.Header[HeaderIdempotencyKey]; present && !validIdempotencyKey(key) {
		return "", reject(http.StatusBadRequest, reasonBadRequest,
			fmt.Sprintf("%s must be 1 to %d printable ASCII characters", HeaderIdempotencyKey, maxIdempotencyKeyLen))
	}
	return key, reply{}
}

// authenticate returns the request's tenant: the default one when no API
// keys are configured, else the one of its bearer key.
func (s *Service) authenticate(r *http.Request) (string, bool) {
	if len(s.tenants) == 0 {
		return s.cfg.Ingest.DefaultTenant, true
	}
	scheme, key, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return s.tenantOf(key)
}

// tenantOf returns the tenant of an API key.
func (s *Service) tenantOf(key string) (string, bool) {
	tenant, ok := s.tenants[sha256.Sum256([]byte(strings.TrimSpace(key)))]
	return tenant, ok
}

func validIdempotencyKey(k string) bool {
	if k == "" || len(k) > maxIdempotencyKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

func bodyFormat(contentType string) (event.Format, bool) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return 0, false
	}
	switch mt {
	case "application/json":
		return event.FormatJSON, true
	case "application/x-ndjson", "application/ndjson":
		return event.FormatNDJSON, true
	}
	return 0, false
}

func bodyEncoding(contentEncoding string) (gzipped, ok bool) {
	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "", "identity":
		return false, true
	case "gzip", "x-gzip":
		return true, true
	}
	return false, false
}

// readBody reads the whole body, decompressing it, and rejects it once
// it passes MaxBodyBytes: both the bytes on the wire and the bytes after
// decompression are limited, so a small gzip bomb gets 413 after reading
// no more than the limit.
func (s *Service) readBody(w http.ResponseWriter, r *http.Request, gzipped bool) ([]byte, reply) {
	limit := s.cfg.Ingest.MaxBodyBytes
	var body io.Reader = http.MaxBytesReader(w, r.Body, limit)
	var buf bytes.Buffer
	if gzipped {
		zr, err := s.gzipReader(body)
		if err != nil {
			return nil, readReject(err, true, limit)
		}
		defer s.gzipReaders.Put(zr)
		body = http.MaxBytesReader(w, io.NopCloser(zr), limit)
	} else if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength, limit)) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, readReject(err, gzipped, limit)
	}
	return buf.Bytes(), reply{}
}

func (s *Service) gzipReader(r io.Reader) (*gzip.Reader, error) {
	if zr, ok := s.gzipReaders.Get().(*gzip.Reader); ok {
		if err := zr.Reset(r); err != nil {
			s.gzipReaders.Put(zr)
			return nil, err
		}
		return zr, nil
	}
	return gzip.NewReader(r)
}

func readReject(err error, gzipped bool, limit int64) reply {
	var tooLarge *http.MaxBytesError
	var netErr net.Error
	switch {
	case errors.As(err, &tooLarge):
		return reject(http.StatusRequestEntityTooLarge, reasonBodyTooLarge,
			fmt.Sprintf("body exceeds %d bytes (after decompression)", limit))
	case errors.As(err, &netErr) && netErr.Timeout():
		return reject(http.StatusRequestTimeout, reasonBadRequest, "timed out reading the body")
	case gzipped:
		return reject(http.StatusBadRequest, reasonBadGzip, "body is not valid gzip: "+err.Error())
	default:
		return reject(http.StatusBadRequest, reasonBadRequest, "read body: "+err.Error())
	}
}

func parseReject(err error) reply {
	var invalid *event.ValidationError
	switch {
	case errors.Is(err, event.ErrEventTooLarge) && errors.As(err, &invalid):
		return reply{status: http.StatusRequestEntityTooLarge, reason: reasonEventTooLarge, events: invalid.Events,
			message: "events too large", problems: invalid.Problems}
	case errors.As(err, &invalid):
		return reply{status: http.StatusBadRequest, reason: reasonInvalid, events: invalid.Events,
			message: "invalid events; nothing was stored", problems: invalid.Problems}
	case errors.Is(err, event.ErrTooManyEvents):
		return reject(http.StatusRequestEntityTooLarge, reasonTooManyEvents, err.Error())
	case errors.Is(err, event.ErrEmpty):
		return reject(http.StatusBadRequest, reasonEmpty, err.Error())
	default:
		return reject(http.StatusBadRequest, reasonBadRequest, err.Error())
	}
}

// publish stores the request's events as one INGEST message and waits for
// JetStream's ack, at most PublishTimeout.
func (s *Service) publish(ctx context.Context, tenant, msgID string, events []event.Event) reply {
	n := len(events)
	conn := s.conn.Load()
	if conn == nil || !conn.NC.IsConnected() {
		return reply{status: http.StatusServiceUnavailable, reason: reasonUnavailable, events: n,
			message: "event store unavailable; retry later"}
	}

	subject := streams.IngestSubject(tenant)
	ctx, span := s.tracer.Start(ctx, "publish "+subject, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		attribute.String("messaging.system", "nats"),
		attribute.String("messaging.destination.name", subject),
		attribute.Int("messaging.batch.message_count", n),
		attribute.String("surge.tenant", tenant),
	))
	defer span.End()
	msg := streams.IngestMsg{Tenant: tenant, ID: msgID, Events: events}.Msg(ctx)

	// Both the connection and the stream bound a message, headers included.
	maxSize := min(conn.NC.MaxPayload(), int64(s.cfg.Streams.MaxMsgSize))
	if size := int64(len(msg.Data) + headerSize(msg.Header)); size > maxSize {
		span.SetStatus(codes.Error, "message too large")
		return reply{status: http.StatusRequestEntityTooLarge, reason: reasonMessageTooLarge, events: n,
			message: fmt.Sprintf("request encodes to %d bytes, more than the %d one message may hold; send fewer events", size, maxSize)}
	}

	pubCtx, cancel := context.WithTimeout(ctx, s.cfg.Ingest.PublishTimeout)
	defer cancel()
	start := time.Now()
	ack, err := conn.JS.PublishMsg(pubCtx, msg, jetstream.WithExpectStream(streams.Ingest))
	s.metrics.publishDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "publish")
		rep := publishReject(err, s.cfg.Ingest.PublishTimeout)
		rep.events = n
		s.logger.Warn("publish events", append(telemetry.TraceFields(ctx),
			zap.String("tenant", tenant), zap.Int("events", n), zap.String("reason", rep.reason), zap.Error(err))...)
		return rep
	}
	span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)), attribute.Bool("surge.duplicate", ack.Duplicate))
	return reply{status: http.StatusAccepted, accepted: n, duplicate: ack.Duplicate}
}

func publishReject(err error, timeout time.Duration) reply {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload),
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
		return reject(http.StatusRequestEntityTooLarge, reasonMessageTooLarge, "request too large for one message; send fewer events")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return reject(http.StatusServiceUnavailable, reasonTimeout,
			fmt.Sprintf("event store did not acknowledge within %s; retry later", timeout))
	default:
		return reject(http.StatusServiceUnavailable, reasonUnavailable, "event store unavailable; retry later")
	}
}

// headerSize is the wire size of NATS headers: "NATS/1.0\r\n", one
// "Key: value\r\n" line per value, and a closing "\r\n".
func headerSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + len(": \r\n")
		}
	}
	return n
}
