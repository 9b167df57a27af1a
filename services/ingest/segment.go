package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/surge-events/surge/pkg/event"
)

// Segment's HTTP Tracking API, which the analytics SDKs of Segment and
// RudderStack speak: a batch of messages, or one message per call path.
// This file maps a message to Surge's event; segmenthttp.go serves it.

// segmentRoutes maps each path of the API to the call its body holds; ""
// is a batch, whose messages say their own type. The one-letter paths are
// those of the browser and mobile libraries.
var segmentRoutes = map[string]string{
	"/v1/batch": "", "/v1/b": "",
	"/v1/track": "track", "/v1/t": "track",
	"/v1/identify": "identify", "/v1/i": "identify",
	"/v1/page": "page", "/v1/p": "page",
	"/v1/screen": "screen", "/v1/s": "screen",
	"/v1/group": "group", "/v1/g": "group",
	"/v1/alias": "alias", "/v1/a": "alias",
}

// segmentKey is the reserved property that keeps what a message holds
// besides the mapped fields (context, integrations, the raw timestamps...).
const segmentKey = "_segment"

// segmentRequest is the part of a body shared by its messages. A call
// path's body is itself the message; then only WriteKey and SentAt apply.
type segmentRequest struct {
	Batch        []json.RawMessage `json:"batch"`
	Context      json.RawMessage   `json:"context"`
	Integrations json.RawMessage   `json:"integrations"`
	SentAt       json.RawMessage   `json:"sentAt"`
	WriteKey     string            `json:"writeKey"`
}

// segmentMessage is one message mapped to Surge's event as /v1/events
// takes it (Wire), or the problems that keep it out.
type segmentMessage struct {
	// MessageID is the message's messageId; "" when it has none.
	MessageID string
	Wire      []byte
	Problems  []event.Problem
	// PropsKey is where the message keeps its properties: "properties",
	// or "traits" for identify and group.
	PropsKey string
}

// mapSegment maps message i of a request. Call is the call path's
// ("" in a batch); received is when ingest received the request.
func mapSegment(raw json.RawMessage, i int, call string, req *segmentRequest, received time.Time) segmentMessage {
	var m segmentMessage
	fail := func(field, reason string) segmentMessage {
		m.Problems = append(m.Problems, event.Problem{Index: i, Field: field, Reason: reason})
		return m
	}
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(raw, &msg); err != nil || msg == nil {
		return fail("", "message must be a JSON object")
	}
	m.MessageID, _ = text(msg["messageId"]) // checked as event_id

	kind := call
	if kind == "" {
		kind, _ = text(msg["type"])
	}
	var eventType string
	m.PropsKey = "properties"
	switch kind {
	case "track":
		name, ok := text(msg["event"])
		if !ok || name == "" {
			return fail("event", "required for track, a non-empty string")
		}
		eventType = name
		delete(msg, "event")
	case "identify", "group":
		m.PropsKey = "traits"
		eventType = "$" + kind
	case "page", "screen", "alias":
		eventType = "$" + kind
	default:
		return fail("type", "must be one of track, identify, page, screen, group, alias")
	}

	userKey := "userId"
	user, ok := userID(msg[userKey])
	if !ok {
		userKey = "anonymousId"
		if user, ok = userID(msg[userKey]); !ok {
			return fail("userId", "userId or anonymousId required, a non-empty string or a number")
		}
	}
	delete(msg, userKey)

	props := msg[m.PropsKey]
	if !absent(props) && bytes.TrimSpace(props)[0] != '{' {
		return fail(m.PropsKey, "must be a JSON object")
	}
	delete(msg, m.PropsKey)

	ts := segmentTS(msg, req.SentAt, received)
	for _, k := range []string{"type", "messageId", "writeKey", "_metadata"} {
		delete(msg, k)
	}
	if call == "" { // a batch's context and integrations apply to each message
		msg["context"] = merged(req.Context, msg["context"])
		msg["integrations"] = merged(req.Integrations, msg["integrations"])
	}
	for k, v := range msg {
		if absent(v) {
			delete(msg, k)
		}
	}
	if len(msg) > 0 {
		props = withKey(props, segmentKey, object(msg))
	}

	// Surge's event as /v1/events takes it, for the parser to validate.
	b := append(make([]byte, 0, 64+len(props)), '{')
	if m.MessageID != "" {
		b = appendString(append(b, `"event_id":`...), m.MessageID)
		b = append(b, ',')
	}
	b = appendString(append(b, `"user_id":`...), user)
	b = appendString(append(b, `,"type":`...), eventType)
	b = ts.AppendFormat(append(b, `,"ts":"`...), time.RFC3339Nano)
	b = append(b, `","properties":`...)
	if absent(props) {
		props = json.RawMessage("{}")
	}
	m.Wire = append(append(b, props...), '}')
	return m
}

// segmentTS applies Segment's clock-skew rule: a client's clock may be off,
// but the time between its event and its send is not, so
// ts = received - (sentAt - originalTimestamp). A message with both
// timestamp and originalTimestamp keeps its timestamp, one with a time
// but no sentAt keeps that time; anything unreadable or out of
// ClickHouse's range gives the receive time (the raw values stay in
// _segment).
func segmentTS(msg map[string]json.RawMessage, batchSentAt json.RawMessage, received time.Time) time.Time {
	ts, tsOK := timeField(msg["timestamp"])
	orig, origOK := timeField(msg["originalTimestamp"])
	sentRaw := msg["sentAt"]
	if absent(sentRaw) {
		sentRaw = batchSentAt
	}
	sent, sentOK := timeField(sentRaw)
	if !tsOK || !origOK || !sentOK {
		return received
	}
	t := received
	switch {
	case ts != nil && orig != nil:
		t = *ts
	case ts != nil || orig != nil:
		t0 := ts
		if t0 == nil {
			t0 = orig
		}
		t = *t0
		if sent != nil {
			t = received.Add(-sent.Sub(*t0))
		}
	}
	if y := t.UTC().Year(); y < 1970 || y > 2105 { // ClickHouse DateTime's range
		return received
	}
	return t.UTC()
}

// timeField reads an ISO 8601 time: nil and true when absent, false when
// present but unreadable.
func timeField(raw json.RawMessage) (*time.Time, bool) {
	if absent(raw) {
		return nil, true
	}
	s, ok := text(raw)
	if !ok {
		return nil, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil, false
	}
	return &t, true
}

// userID reads an id the way the SDKs send it: a non-empty string, or a
// number kept as its text.
func userID(raw json.RawMessage) (string, bool) {
	if absent(raw) {
		return "", false
	}
	if s, ok := text(raw); ok {
		return s, s != ""
	}
	var n json.Number
	if json.Unmarshal(raw, &n) != nil {
		return "", false
	}
	return n.String(), true
}

// text reads a JSON string.
func text(raw json.RawMessage) (string, bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) { // nothing to decode
		return string(raw[1 : len(raw)-1]), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

func absent(raw json.RawMessage) bool {
	return len(raw) == 0 || string(raw) == "null"
}

// merged is the object shared under the message's own, whose keys win;
// what is not an object on either side is left as it is.
func merged(shared, own json.RawMessage) json.RawMessage {
	if absent(shared) {
		return own
	}
	var base, mine map[string]json.RawMessage
	if json.Unmarshal(shared, &base) != nil || base == nil {
		return own
	}
	if !absent(own) {
		if json.Unmarshal(own, &mine) != nil || mine == nil {
			return own
		}
	}
	for k, v := range mine {
		base[k] = v
	}
	return marshal(base)
}

// withKey returns the JSON object obj with key set to value: spliced in
// when obj does not mention the key (the common case), else rebuilt.
func withKey(obj json.RawMessage, key string, value json.RawMessage) json.RawMessage {
	obj = bytes.TrimSpace(obj)
	if absent(obj) {
		obj = json.RawMessage("{}")
	}
	quoted := appendString(nil, key)
	if !bytes.Contains(obj, quoted) {
		b := append(make([]byte, 0, len(obj)+len(quoted)+len(value)+2), bytes.TrimSpace(obj[:len(obj)-1])...)
		if len(b) > 1 { // not {}
			b = append(b, ',')
		}
		b = append(append(append(b, quoted...), ':'), value...)
		return append(b, '}')
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(obj, &fields) != nil {
		return obj // not reached: obj is a decoded JSON object
	}
	fields[key] = value
	return object(fields)
}

// object encodes fields as one JSON object, keys sorted.
func object(fields map[string]json.RawMessage) json.RawMessage {
	b := []byte{'{'}
	for i, k := range slices.Sorted(maps.Keys(fields)) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(appendString(b, k), ':')
		b = append(b, fields[k]...)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return append(b, marshal(s)...) // escapes and non-ASCII
		}
	}
	return append(append(append(b, '"'), s...), '"')
}

// marshal encodes v compactly without escaping <, > and &, so text is
// stored as it was sent. Map keys come out sorted.
func marshal(v any) json.RawMessage {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only decoded JSON and strings reach here: it always encodes.
		panic(fmt.Sprintf("segment: encode %T: %v", v, err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// segmentField names a field of Surge's event by the message field it came
// from, so problems speak the sender's language.
func segmentField(field, propsKey string) string {
	switch {
	case field == "user_id":
		return "userId"
	case field == "event_id":
		return "messageId"
	case field == "ts":
		return "timestamp"
	case field == "type":
		return "event"
	case strings.HasPrefix(field, "properties."+segmentKey+"."):
		return strings.TrimPrefix(field, "properties."+segmentKey+".")
	case strings.HasPrefix(field, "properties"):
		return propsKey + strings.TrimPrefix(field, "properties")
	}
	return field
}
