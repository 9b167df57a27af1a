// Package problems lets a tenant see what became of its events after they
// were accepted: the services Add each problem they meet (an event
// dead-lettered as invalid, a property value that conflicts with its typed
// column, a key left unpromoted, a request over quota), a Recorder
// aggregates them in memory per (tenant, reason, field) and publishes one
// PROBLEMS message per aggregate every second, and Read gives a tenant's
// aggregates back for GET /v1/problems and `surge problems`.
//
// Everything is bounded: the reasons are a fixed set, a sample is a short
// excerpt, an aggregate keeps at most MaxSamples samples, the Recorder at
// most a configured number of keys per interval (the rest are counted in
// one overflow aggregate), and the PROBLEMS stream keeps at most
// streams.Config.ProblemsMaxPerTenant aggregates per tenant, for
// ProblemsMaxAge, within ProblemsMaxBytes.
package problems

import (
	"encoding/json"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/surge-events/surge/pkg/event"
)

// Reasons: what went wrong, the reason label of the metrics and the key of
// the answer. docs/http-api.md explains each under its own name.
const (
	// ReasonMissingField: a required field is absent (type, user_id;
	// Segment's event, userId or anonymousId).
	ReasonMissingField = "missing_field"
	// ReasonUnknownField: an event holds a field Surge does not know.
	ReasonUnknownField = "unknown_field"
	// ReasonInvalidValue: a field's value has the wrong type, form or
	// length.
	ReasonInvalidValue = "invalid_value"
	// ReasonInvalidUTF8: a string or key is not valid UTF-8.
	ReasonInvalidUTF8 = "invalid_utf8"
	// ReasonMalformedEvent: an event is not a JSON object, or not JSON.
	ReasonMalformedEvent = "malformed_event"
	// ReasonEventTooLarge: an event is over the size limit.
	ReasonEventTooLarge = "event_too_large"
	// ReasonMalformedMessage: a NATS or MQTT producer's message holds no
	// events to read (not JSON, or a tenant Surge cannot take).
	ReasonMalformedMessage = "malformed_message"
	// ReasonTypeConflict: a property's value does not fit its typed
	// column (or another path's column has its name); it is kept in
	// _conflicts.
	ReasonTypeConflict = "type_conflict"
	// ReasonUnpromotedKey: a property got no typed column because a limit
	// was reached (keys per event, columns per tenant or table, new
	// columns per hour); it is kept in properties and listed in
	// _unpromoted.
	ReasonUnpromotedKey = "unpromoted_key"
	// ReasonOverQuota: a request was refused by the tenant's quota.
	ReasonOverQuota = "over_quota"
	// ReasonUnauthorized: a request with an unknown API or write key,
	// recorded under tenant Unknown.
	ReasonUnauthorized = "unauthorized"
	// ReasonOverflow: problems past the Recorder's key bound in one
	// interval, recorded under tenant Overflow.
	ReasonOverflow = "overflow"
	// ReasonErasedUser: an event of a user whose data an erasure request
	// erased, dropped (docs/erasure.md).
	ReasonErasedUser = "erased_user"
)

// Reasons lists every reason, in the order the docs explain them.
var Reasons = []string{
	ReasonMissingField, ReasonUnknownField, ReasonInvalidValue, ReasonInvalidUTF8,
	ReasonMalformedEvent, ReasonEventTooLarge, ReasonMalformedMessage,
	ReasonTypeConflict, ReasonUnpromotedKey, ReasonOverQuota, ReasonUnauthorized, ReasonOverflow,
	ReasonErasedUser,
}

// otherReason labels the metric of a reason not in Reasons.
const otherReason = "other"

// Tenants that no request names: only operators see them (`surge
// problems --tenant _unknown`), since no API key reads them.
const (
	// Unknown holds the problems of requests whose key named no tenant,
	// and of any Add with an invalid tenant.
	Unknown = "_unknown"
	// Overflow holds the problems past the Recorder's key bound.
	Overflow = "_overflow"
)

// DocsPage is the page of the docs that explains every reason, in its
// section #problems and under a heading per reason (see Docs).
const DocsPage = "https://github.com/surge-events/surge/blob/main/docs/http-api.md"

// Docs is the link to the explanation of reason: its heading, `reason`,
// whose anchor is the reason itself.
func Docs(reason string) string {
	if slices.Contains(Reasons, reason) {
		return DocsPage + "#" + reason
	}
	return DocsPage + "#problems"
}

// Bounds of what one problem carries.
const (
	// MaxSamples is the most samples an aggregate keeps: the first ones.
	MaxSamples = 3
	// MaxExcerpt is the longest excerpt of a sample, and of its detail,
	// in bytes.
	MaxExcerpt = 200
	// MaxField is the longest field or id kept, in bytes.
	MaxField = 256
)

// Sample is one occurrence of a problem, to recognise it by.
type Sample struct {
	// ID is the event's event_id, or the Segment message's messageId.
	ID string `json:"id,omitempty"`
	// Detail says what is wrong in words: "required", "must be an
	// RFC 3339 string", "value does not fit column p_amount".
	Detail string `json:"detail,omitempty"`
	// Excerpt is the start of what was sent, at most MaxExcerpt bytes.
	Excerpt string `json:"excerpt,omitempty"`
}

// Aggregate is the problems of one (tenant, reason, field) that one
// service met in one flush interval: one PROBLEMS message.
type Aggregate struct {
	Tenant string `json:"tenant"`
	Reason string `json:"reason"`
	// Field is the event field or property path ("type",
	// "properties.plan", "/plan"); "" for the whole event or request.
	Field string `json:"field,omitempty"`
	Count int64  `json:"count"`
	// First and Last are when the first and the last were met.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// Samples are the first MaxSamples occurrences.
	Samples []Sample `json:"samples,omitempty"`
	// Service is the service that met them: ingest, partitioner, batcher.
	Service string `json:"service"`
}

// EventReason is the reason of a problem pkg/event reports of an event
// (event.Problem.Reason, or the problem Segment's mapping reports).
// Reasons it does not know are ReasonInvalidValue.
func EventReason(p event.Problem) string {
	r := p.Reason
	switch {
	case r == "required" || strings.Contains(r, "required"):
		return ReasonMissingField
	case r == "unknown field":
		return ReasonUnknownField
	case strings.HasPrefix(r, "invalid UTF-8"):
		return ReasonInvalidUTF8
	case strings.HasPrefix(r, "malformed JSON"), p.Field == "" && strings.HasSuffix(r, "must be a JSON object"):
		return ReasonMalformedEvent
	case strings.HasPrefix(r, "event is ") && strings.Contains(r, "limit is"),
		strings.HasPrefix(r, "message_too_large"): // a Segment message past max_event_bytes
		return ReasonEventTooLarge
	}
	return ReasonInvalidValue
}

// FromEvent is the reason, field and sample of one problem of an invalid
// event: id names the event (event_id, messageId; "" when none) and raw
// is the event as sent, of which the sample keeps an excerpt.
func FromEvent(p event.Problem, id string, raw []byte) (reason, field string, s Sample) {
	return EventReason(p), p.Field, Sample{ID: id, Detail: p.Reason, Excerpt: Excerpt(raw)}
}

// ID is the string the JSON object raw holds at key (the event_id of an
// event, the messageId of a Segment message), "" when it holds none.
func ID(raw []byte, key string) string {
	var fields map[string]json.RawMessage
	var id string
	if json.Unmarshal(raw, &fields) != nil || json.Unmarshal(fields[key], &id) != nil {
		return ""
	}
	return id
}

// Excerpt is a copy of the start of b, at most MaxExcerpt bytes, cut on a
// character boundary.
func Excerpt(b []byte) string {
	return strings.Clone(cut(string(b), MaxExcerpt))
}

// cut is s's first n bytes at most, cut on a character boundary; it
// shares s's memory.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// clip is cut, copied, so a kept sample holds no request body alive.
func (s Sample) clip() Sample {
	return Sample{
		ID:      strings.Clone(cut(s.ID, MaxField)),
		Detail:  strings.Clone(cut(s.Detail, MaxExcerpt)),
		Excerpt: strings.Clone(cut(s.Excerpt, MaxExcerpt)),
	}
}
