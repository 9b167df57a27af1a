package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

type successBody struct {
	Success bool `json:"success"`
}

// serveSegment handles one POST of Segment's API the way ingest handles
// /v1/events (credentials, an in-flight slot, the body, validation, one
// INGEST message, an answer only after JetStream's ack), with Segment's
// auth forms, bodies and answers: 200 {"success":true} once the valid
// messages are stored and each invalid one is dead-lettered, since every
// SDK drops a whole batch answered 400.
func (s *Service) serveSegment(ctx context.Context, w http.ResponseWriter, r *http.Request, call string) reply {
	tenant, fromHeader, ok := s.segmentTenant(r)
	if !ok {
		return segmentUnauthorized(w)
	}
	// JSON whatever the Content-Type: the SDKs label it text/plain or
	// application/x-www-form-urlencoded as often as application/json.
	body, idemKey, release, rep := s.admit(w, r)
	if rep.status != 0 {
		return rep
	}
	defer release()

	var req segmentRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return reject(http.StatusBadRequest, reasonBadRequest, "body must be a JSON object with batch, if any, an array: "+err.Error())
	}
	if !fromHeader && len(s.tenants) > 0 {
		if tenant, ok = s.tenantOf(req.WriteKey); !ok {
			return segmentUnauthorized(w)
		}
	}
	raws := req.Batch
	if call != "" {
		raws = []json.RawMessage{body}
	} else if raws == nil {
		return reject(http.StatusBadRequest, reasonBadRequest, "batch must be a JSON array of messages")
	}
	if limit := s.cfg.Ingest.MaxEvents; len(raws) > limit {
		return reject(http.StatusRequestEntityTooLarge, reasonTooManyEvents, fmt.Sprintf("%s: limit is %d", event.ErrTooManyEvents, limit))
	}

	messages, events := s.segmentEvents(raws, call, &req, tenant)
	msgID := segmentMsgID(tenant, messages)
	if idemKey != "" {
		msgID = tenant + ":" + idemKey
	}
	if len(events) > 0 {
		if rep := s.publish(ctx, tenant, msgID, events); rep.status != http.StatusAccepted {
			return rep
		}
	}
	invalid, err := s.deadLetterSegment(ctx, tenant, msgID, raws, messages)
	if err != nil {
		rep := publishReject(err, s.cfg.Ingest.PublishTimeout)
		rep.events = len(raws)
		s.logger.Warn("dead-letter messages", append(telemetry.TraceFields(ctx), zap.String("tenant", tenant), zap.Error(err))...)
		return rep
	}
	s.metrics.eventsRejected.WithLabelValues(reasonInvalid).Add(float64(invalid))
	return reply{status: http.StatusOK, accepted: len(events)}
}

// segmentEvents maps every message and validates the results with the
// rules of /v1/events; a message with problems has them in its
// segmentMessage, the others are returned as events.
func (s *Service) segmentEvents(raws []json.RawMessage, call string, req *segmentRequest, tenant string) ([]segmentMessage, []event.Event) {
	received := time.Now().UTC().Truncate(time.Microsecond)
	messages := make([]segmentMessage, len(raws))
	wire := bytes.NewBufferString("[")
	var positions []int // the message of each wire event
	for i, raw := range raws {
		messages[i] = mapSegment(raw, i, call, req, received)
		if len(messages[i].Problems) > 0 {
			continue
		}
		if len(positions) > 0 {
			wire.WriteByte(',')
		}
		wire.Write(messages[i].Wire)
		positions = append(positions, i)
	}
	if len(positions) == 0 {
		return messages, nil
	}
	wire.WriteByte(']')

	newID := func(int) string { return ulid.MustNew(ulid.Timestamp(received), ulid.DefaultEntropy()).String() }
	items, err := s.parser.ParseEach(wire.Bytes(), event.FormatJSON, tenant, received, newID)
	if err != nil {
		// The wire array is built from valid objects: not reached.
		panic(fmt.Sprintf("segment: parse mapped events: %v", err))
	}
	events := make([]event.Event, 0, len(items))
	for _, it := range items {
		if len(it.Problems) == 0 {
			events = append(events, it.Event)
			continue
		}
		m := &messages[positions[it.Index]]
		for _, p := range it.Problems {
			m.Problems = append(m.Problems, event.Problem{Index: positions[it.Index], Field: segmentField(p.Field, m.PropsKey), Reason: p.Reason})
		}
	}
	return messages, events
}

// segmentMsgID is the Nats-Msg-Id of a request whose every message has a
// messageId: a hash of the tenant and those ids. The SDKs resend a failed
// batch with a new sentAt, so the body is no key; its messages are.
func segmentMsgID(tenant string, messages []segmentMessage) string {
	h := sha256.New()
	h.Write([]byte("segment\x00" + tenant))
	for _, m := range messages {
		if m.MessageID == "" {
			return ""
		}
		h.Write([]byte("\x00" + m.MessageID))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// deadLetterSegment publishes each invalid message to DEAD_LETTER, body =
// the message as sent, and waits for each ack. Ids derived from the
// request's make a retry's dead letters duplicates. It returns how many
// it dead-lettered.
func (s *Service) deadLetterSegment(ctx context.Context, tenant, msgID string, raws []json.RawMessage, messages []segmentMessage) (int, error) {
	conn := s.conn.Load()
	if conn == nil {
		return 0, nats.ErrConnectionClosed // not reached: ingest serves only once connected
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Ingest.PublishTimeout)
	defer cancel()
	n := 0
	for i, m := range messages {
		if len(m.Problems) == 0 {
			continue
		}
		problems, _ := json.Marshal(m.Problems) // a slice of plain structs cannot fail
		dl := streams.DeadLetterMsg{
			Service:  "ingest",
			Subject:  streams.IngestInvalidSubject(tenant),
			Data:     raws[i],
			Reason:   problemsReason(m.Problems),
			Index:    i,
			HasIndex: true,
			Tenant:   tenant,
			Problems: string(problems),
		}.Msg()
		// No stream sequence to name it by: the request's id does.
		dl.Header.Del(jetstream.MsgIDHeader)
		if msgID != "" {
			dl.Header.Set(jetstream.MsgIDHeader, "ingest:"+msgID+":"+strconv.Itoa(i))
		}
		telemetry.Inject(ctx, dl.Header)
		if _, err := conn.JS.PublishMsg(ctx, dl, jetstream.WithExpectStream(streams.DeadLetter)); err != nil {
			return n, fmt.Errorf("dead-letter message %d: %w", i, err)
		}
		n++
	}
	return n, nil
}

// segmentTenant authenticates a Segment request by its Authorization
// header: the write key as Basic user name (the SDKs' form) or Bearer
// token (Surge's). Without the header the key is the body's writeKey, read
// later: fromHeader is false and so is ok only when a header is wrong.
func (s *Service) segmentTenant(r *http.Request) (tenant string, fromHeader, ok bool) {
	if len(s.tenants) == 0 {
		return s.cfg.Ingest.DefaultTenant, true, true
	}
	if r.Header.Get("Authorization") == "" {
		return "", false, true
	}
	if user, _, basic := r.BasicAuth(); basic {
		tenant, ok = s.tenantOf(user)
		return tenant, true, ok
	}
	tenant, ok = s.authenticate(r)
	return tenant, true, ok
}

func segmentUnauthorized(w http.ResponseWriter) reply {
	w.Header().Set("WWW-Authenticate", `Basic realm="surge"`)
	return reject(http.StatusUnauthorized, reasonUnauthorized,
		"missing or invalid write key; send it as the Basic auth user name, the body's writeKey or Authorization: Bearer <key>")
}
