package ingest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/surge-events/surge/pkg/event"
)

// segmentAPI is Segment's Tracking API on one of its paths (segmentRoutes),
// the way /v1/events is served, with Segment's auth forms, bodies and
// answers: 200 {"success":true} once the valid messages are stored and
// each invalid one is dead-lettered, since every SDK drops a whole batch
// answered 400.
type segmentAPI struct {
	// s gives the parser, the API keys and the limits.
	s *Service
	// call is the path's call ("track"...), "" for a batch.
	call string
}

var (
	_ protocol = segmentAPI{}
	_ streamer = segmentAPI{}
)

type successBody struct {
	Success bool `json:"success"`
}

// authorize reads the write key of the Authorization header: the Basic
// user name (the SDKs' form) or a Bearer token (Surge's). Without the
// header the key is the body's writeKey, which decode reads. Any
// Content-Type is JSON: the SDKs label it text/plain or
// application/x-www-form-urlencoded as often as application/json.
func (p segmentAPI) authorize(r *http.Request) (string, reply) {
	s := p.s
	switch {
	case len(s.tenants) == 0:
		return s.cfg.Ingest.DefaultTenant, reply{}
	case r.Header.Get("Authorization") == "":
		return "", reply{}
	}
	var tenant string
	var ok bool
	if user, _, basic := r.BasicAuth(); basic {
		tenant, ok = s.tenantOf(user)
	} else {
		tenant, ok = s.authenticate(r)
	}
	if !ok {
		return "", segmentUnauthorized()
	}
	return tenant, reply{}
}

// decode maps and validates every message; the request is refused only
// when its body is unreadable or too many messages. A batch is read as a
// stream (readSegmentBatch): a message over max_event_bytes is
// dead-lettered as an excerpt, so a batch past max_body_bytes because of
// a few huge messages stores the others, up to segment_max_body_bytes.
func (p segmentAPI) decode(r *http.Request, body []byte, tenant string) (decoded, reply) {
	var b segmentBatch
	if p.call == "" {
		var rep reply
		if b, rep = readSegmentBatch(p.s.wholeBody(r, body), p.s.batchLimits()); rep.status != 0 {
			return decoded{}, rep
		}
	} else if err := json.Unmarshal(body, &b.req); err != nil {
		return decoded{}, reject(http.StatusBadRequest, reasonBadRequest, "body must be a JSON object with batch, if any, an array: "+err.Error())
	}
	req := &b.req
	if tenant == "" {
		var ok bool
		if tenant, ok = p.s.tenantOf(req.WriteKey); !ok {
			return decoded{}, segmentUnauthorized()
		}
	}
	raws := req.Batch
	if p.call != "" {
		raws = []json.RawMessage{body}
	} else if raws == nil {
		return decoded{}, reject(http.StatusBadRequest, reasonBadRequest, "batch must be a JSON array of messages")
	}
	if limit := p.s.cfg.Ingest.MaxEvents; len(raws) > limit {
		return decoded{}, reject(http.StatusRequestEntityTooLarge, reasonTooManyEvents, fmt.Sprintf("%s: limit is %d", event.ErrTooManyEvents, limit))
	}

	messages, events := p.s.segmentEvents(raws, p.call, req, tenant, b.tooLarge)
	d := decoded{tenant: tenant, events: events, msgID: segmentMsgID(tenant, messages), items: len(raws), partial: true, size: int(b.size)}
	for i, m := range messages {
		if len(m.Problems) > 0 {
			d.invalid = append(d.invalid, invalidItem{index: i, data: raws[i], problems: m.Problems})
		}
	}
	return d, reply{}
}

// streamLimit makes a batch a stream read up to segment_max_body_bytes;
// a call path's one message is read whole within max_body_bytes.
func (p segmentAPI) streamLimit() int64 {
	if p.call != "" {
		return 0
	}
	return p.s.cfg.Ingest.SegmentMaxBodyBytes
}

// answer is Segment's 200 {"success":true}.
func (segmentAPI) answer(stored) (int, any) {
	return http.StatusOK, successBody{Success: true}
}

// segmentEvents maps every message and validates the results with the
// rules of /v1/events; a message with problems has them in its
// segmentMessage, the others are returned as events. A message in
// tooLarge is not mapped: it is refused as it is there.
func (s *Service) segmentEvents(raws []json.RawMessage, call string, req *segmentRequest, tenant string, tooLarge map[int]segmentMessage) ([]segmentMessage, []event.Event) {
	received := time.Now().UTC().Truncate(time.Microsecond)
	messages := make([]segmentMessage, len(raws))
	wire := bytes.NewBufferString("[")
	var positions []int // the message of each wire event
	for i, raw := range raws {
		if m, ok := tooLarge[i]; ok {
			messages[i] = m
			continue
		}
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

func segmentUnauthorized() reply {
	rep := reject(http.StatusUnauthorized, reasonUnauthorized,
		"missing or invalid write key; send it as the Basic auth user name, the body's writeKey or Authorization: Bearer <key>")
	rep.challenge = `Basic realm="surge"`
	return rep
}
