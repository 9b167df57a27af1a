// Package erasure erases a user's data on request (issue 20): it refuses
// the user's new events at the entry points, keeps the events already in
// flight from becoming visible, deletes the user's rows on every replica
// of every ClickHouse shard and the user's dead letters, and keeps an
// audit record of each request.
//
// # The bucket
//
// SURGE_ERASURE (Bucket) holds two kinds of keys:
//
//   - user.<tenant>.<hash>: the suppression list. hash is UserHash(tenant,
//     user); the value names the request and, for a request with Before,
//     the time before which the user's events are erased (Suppression).
//     Watcher keeps it in memory for the entry points: ingest's HTTP and
//     Segment routes, the partitioner's NATS and MQTT producers and the
//     batcher, which drops suppressed events from the batches it cuts.
//   - request.<id>: a request and its audit record (Request), moved along
//     the state machine requested -> suppressed -> landed-past -> deleted
//     -> verified by the Runner, which one sink instance runs under the
//     lease "eraser".
//
// The raw user ids are kept in the request only until it is verified:
// they are what the ClickHouse DELETE and the dead-letter scan match on.
// From then on the record keeps their hashes and their count.
package erasure

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"time"
)

// Bucket is the key-value bucket of the suppression list and the requests.
const Bucket = "SURGE_ERASURE"

// MaxUsers bounds the users of one request: the request, with its raw ids
// and their hashes, is one key-value entry.
const MaxUsers = 10000

const (
	userPrefix    = "user."
	requestPrefix = "request."
)

// UserHash is the hex SHA-256 of tenant and user, cut to 128 bits: the
// suppression key and what the audit record keeps instead of the id.
func UserHash(tenant, user string) string {
	h := userSum(tenant, user)
	return hex.EncodeToString(h[:])
}

// userSum is UserHash as bytes, without allocating for usual ids: the
// per-event check of the entry points.
func userSum(tenant, user string) [16]byte {
	var buf [160]byte
	b := append(buf[:0], tenant...)
	b = append(b, 0)
	b = append(b, user...)
	sum := sha256.Sum256(b)
	return [16]byte(sum[:16])
}

// UserKey is the suppression key of user in tenant.
func UserKey(tenant, user string) string { return userPrefix + tenant + "." + UserHash(tenant, user) }

// userOf splits a suppression key into its tenant and hash.
func userOf(key string) (tenant, hash string, ok bool) {
	rest, ok := strings.CutPrefix(key, userPrefix)
	if !ok {
		return "", "", false
	}
	tenant, hash, ok = strings.Cut(rest, ".")
	return tenant, hash, ok && tenant != "" && hash != ""
}

// RequestKey is the key of request id.
func RequestKey(id string) string { return requestPrefix + id }

// Suppression is the value of a suppression key.
type Suppression struct {
	// Request is the id of the request that suppressed the user (the
	// latest one that widened it).
	Request string `json:"request"`
	// Before, when set, limits the suppression to events whose ts is
	// before it; zero suppresses every event of the user.
	Before time.Time `json:"before,omitzero"`
}

// Covers reports whether the suppression refuses an event with time ts.
func (s Suppression) Covers(ts time.Time) bool { return s.Before.IsZero() || ts.Before(s.Before) }

// wider reports whether s refuses more than old: a whole-user suppression
// is never narrowed by a later one with Before.
func (s Suppression) wider(old Suppression) bool {
	switch {
	case old.Before.IsZero():
		return false
	case s.Before.IsZero():
		return true
	default:
		return s.Before.After(old.Before)
	}
}

// State is where a request is in its erasure.
type State string

// The states of a request, in order. Each step is idempotent, so a runner
// that crashed anywhere repeats at most the step it was in.
const (
	// Requested: recorded; its users' suppression keys were written by
	// whoever took the request.
	Requested State = "requested"
	// Suppressed: the runner wrote the suppression keys again (idempotent)
	// and recorded when; after the settle delay it records every shard's
	// EVENTS and BATCHES last sequences (the landing marks).
	Suppressed State = "suppressed"
	// LandedPast: every shard's sink landed everything that was in EVENTS
	// or BATCHES at the marks.
	LandedPast State = "landed-past"
	// Deleted: one mutation per ClickHouse shard for the request's
	// deletion batch finished on every replica; the dead letters are gone.
	Deleted State = "deleted"
	// Verified: no row of the users is left on any replica, with or
	// without FINAL; the raw user ids were dropped from the record.
	Verified State = "verified"
)

// Mark is one logical shard's landing mark: the last EVENTS and BATCHES
// sequences of the shard's subjects when it was recorded (0: none).
type Mark struct {
	Events  uint64 `json:"events"`
	Batches uint64 `json:"batches"`
}

// Request is one erasure request and its audit record.
type Request struct {
	// ID names the request.
	ID string `json:"id"`
	// Tenant owns the users.
	Tenant string `json:"tenant"`
	// Users are the raw user ids, kept until the request is verified.
	Users []string `json:"users,omitempty"`
	// UserHashes are UserHash of each user, kept for the audit.
	UserHashes []string `json:"user_hashes"`
	// UserCount is the number of distinct users.
	UserCount int `json:"user_count"`
	// Before, when set, erases only rows (and refuses only events) whose ts
	// is before it.
	Before time.Time `json:"before,omitzero"`
	// RequestedAt is when the request was taken.
	RequestedAt time.Time `json:"requested_at"`
	// State is where the request is.
	State State `json:"state"`
	// SuppressedAt is when the runner confirmed the suppression keys.
	SuppressedAt time.Time `json:"suppressed_at,omitzero"`
	// Marks are the landing marks by logical shard; MarkedAt is when.
	Marks    map[int]Mark `json:"marks,omitempty"`
	MarkedAt time.Time    `json:"marked_at,omitzero"`
	// LandedAt is when every shard had landed past its mark.
	LandedAt time.Time `json:"landed_at,omitzero"`
	// Batch names the deletion batch: the requests deleted by the same
	// mutation, one per ClickHouse shard.
	Batch string `json:"batch,omitempty"`
	// RowsDeleted are the request's rows per ClickHouse shard (by index in
	// clickhouse.addrs), counted on the shard just before the mutation.
	RowsDeleted map[string]uint64 `json:"rows_deleted,omitempty"`
	// CountedBatch is the deletion batch whose rows RowsDeleted holds
	// (it adds up the rounds); Rounds counts the deletions that had to be
	// repeated because rows were left after them.
	CountedBatch string `json:"counted_batch,omitempty"`
	Rounds       int    `json:"rounds,omitempty"`
	// DeadLetters is how many dead letters held the users' events (deleted,
	// or rewritten without them).
	DeadLetters int `json:"dead_letters"`
	// DeletedAt and VerifiedAt are when those states were reached.
	DeletedAt  time.Time `json:"deleted_at,omitzero"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	// LastError is the last error a step met (it is retried), "" after
	// the step succeeded.
	LastError string `json:"last_error,omitempty"`

	// revision is the entry's revision when read, for a compare-and-set.
	revision uint64
}

// Done reports whether the request is finished.
func (r *Request) Done() bool { return r.State == Verified }

// Suppression is what the request writes under each user's key.
func (r *Request) Suppression() Suppression { return Suppression{Request: r.ID, Before: r.Before} }
