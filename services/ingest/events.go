package ingest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"mime"
	"net/http"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/surge-events/surge/pkg/event"
)

// EventsPath is where clients post events.
const EventsPath = "/v1/events"

// eventsAPI is Surge's own protocol on EventsPath: a JSON array (or one
// object) or NDJSON of events, a Bearer API key, and a request stored
// whole or not at all: one invalid event refuses it with every problem.
type eventsAPI struct {
	// s gives the parser and the API keys.
	s *Service
}

var _ protocol = eventsAPI{}

type acceptedBody struct {
	Accepted  int  `json:"accepted"`
	Duplicate bool `json:"duplicate,omitempty"`
}

// authorize reads the Bearer key and requires a content type the parser
// reads.
func (p eventsAPI) authorize(r *http.Request) (string, reply) {
	tenant, ok := p.s.authenticate(r)
	if !ok {
		rep := reject(http.StatusUnauthorized, reasonUnauthorized, "missing or invalid API key; send Authorization: Bearer <key>")
		rep.challenge = `Bearer realm="surge"`
		return "", rep
	}
	if _, ok := bodyFormat(r.Header.Get("Content-Type")); !ok {
		return "", reject(http.StatusUnsupportedMediaType, reasonMediaType,
			"Content-Type must be application/json, application/x-ndjson or application/ndjson")
	}
	return tenant, reply{}
}

// decode validates every event. A request whose events all carry the
// client's event_id is identified by its content: the message id is a
// hash of the tenant and the body.
func (p eventsAPI) decode(r *http.Request, body []byte, tenant string) (decoded, reply) {
	format, _ := bodyFormat(r.Header.Get("Content-Type")) // authorize checked it
	// Count the ids the parser makes up.
	parser := p.s.parser
	generated := 0
	parser.NewID = func(t time.Time) string {
		generated++
		return ulid.MustNew(ulid.Timestamp(t), ulid.DefaultEntropy()).String()
	}
	events, err := parser.ParseBytes(body, format, tenant)
	if err != nil {
		return decoded{}, parseReject(err)
	}
	d := decoded{tenant: tenant, events: events, items: len(events)}
	if generated == 0 {
		h := sha256.New()
		h.Write([]byte(tenant))
		h.Write([]byte{0})
		h.Write(body)
		d.msgID = hex.EncodeToString(h.Sum(nil))
	}
	return d, reply{}
}

// answer is 202 with the count of events stored.
func (eventsAPI) answer(st stored) (int, any) {
	return http.StatusAccepted, acceptedBody{Accepted: st.events, Duplicate: st.duplicate}
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
