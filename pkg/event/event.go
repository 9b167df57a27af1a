// Package event defines Surge's event model: what a client sends, how it is
// validated, and the compact binary form that travels between services.
package event

import "time"

// Event is one validated event as it moves through the pipeline.
type Event struct {
	// EventID identifies the event; a ULID when the client sent none.
	EventID string
	// IDGenerated reports that Surge made EventID up (the client sent
	// none): such an id is never a key for deduplication.
	IDGenerated bool
	// Tenant owns the event; it comes from the credentials, never the payload.
	Tenant string
	// UserID is the shard key within a tenant.
	UserID string
	// Type names what happened, at most MaxTypeLen characters.
	Type string
	// TS is when the event happened; defaults to ReceivedAt.
	TS time.Time
	// ReceivedAt is when ingest accepted the request.
	ReceivedAt time.Time
	// Properties is a JSON object kept as text; "{}" when absent.
	Properties string
}

// Size is an estimate of the event's bytes, used for batch cutting.
func (e *Event) Size() int {
	return len(e.EventID) + len(e.Tenant) + len(e.UserID) + len(e.Type) + len(e.Properties) + 16
}
