package batch

import (
	"time"

	"github.com/surge-events/surge/pkg/event"
)

// CutReason says why a batch is cut. Its values are the reason label of
// the batcher's surge_batcher_cut_total and the surge.batch.cut span
// attribute, so they must not change.
type CutReason string

const (
	// CutRows: the batch holds MaxRows events, or the next message would
	// pass MaxRows.
	CutRows CutReason = "rows"
	// CutBytes: the batch holds MaxBytes event bytes, or the next message
	// would pass MaxBytes.
	CutBytes CutReason = "bytes"
	// CutAge: the batch's first event has waited MaxAge.
	CutAge CutReason = "age"
	// CutShutdown: the batcher is stopping and flushes what it holds.
	CutShutdown CutReason = "shutdown"
	// CutIdle: the batch's first event has waited MinAge and the shard's
	// sink has landed every batch before it.
	CutIdle CutReason = "idle"
)

// CutReasons are every reason, in a fixed order.
var CutReasons = []CutReason{CutRows, CutBytes, CutAge, CutShutdown, CutIdle}

// Builder collects whole EVENTS messages of one shard until the policy says
// the batch is complete, and says why: the caller cuts, the builder
// decides. A message is never split across batches, so a batch is exactly
// a sequence range. Not safe for concurrent use: one shard loop owns it.
type Builder struct {
	policy Policy
	shard  int
	cur    *Batch
	bytes  int
	opened time.Time
	// linger is how old the open batch must be before an idle sink cuts
	// it (Ripe): Policy.MinAge while the sink keeps up, longer while it
	// does not (Paced).
	linger time.Duration
}

// NewBuilder starts an empty builder for shard.
func NewBuilder(shard int, p Policy) *Builder {
	return &Builder{policy: p, shard: shard, cur: &Batch{Shard: shard}, linger: p.MinAge}
}

// Admit reports why the open batch must be cut before a message of rows
// events and size bytes joins it, or "" when the message fits. When both
// limits would be passed the reason is CutRows. An empty batch takes any
// message, so an oversized message still moves on, alone.
func (b *Builder) Admit(rows, size int) CutReason {
	switch {
	case b.cur.Len() == 0:
		return ""
	case b.cur.Len()+rows > b.policy.MaxRows:
		return CutRows
	case b.bytes+size > b.policy.MaxBytes:
		return CutBytes
	}
	return ""
}

// Add appends the message with stream sequence seq, received at now, and
// reports why the batch is now full and must be cut, or "" when it is not.
// When both limits are reached the reason is CutRows.
func (b *Builder) Add(seq uint64, events []event.Event, now time.Time) CutReason {
	if len(events) == 0 {
		return ""
	}
	if b.cur.Len() == 0 {
		b.opened = now
	}
	b.cur.Append(seq, events)
	for i := range events {
		b.bytes += events[i].Size()
	}
	return b.full()
}

// full is why the open batch has reached a limit; "" when it has not.
func (b *Builder) full() CutReason {
	switch {
	case b.cur.Len() >= b.policy.MaxRows:
		return CutRows
	case b.bytes >= b.policy.MaxBytes:
		return CutBytes
	}
	return ""
}

// Expired reports CutAge when the open batch has waited MaxAge at now, or
// "" when it has not (or is empty).
func (b *Builder) Expired(now time.Time) CutReason {
	if d := b.Deadline(); !d.IsZero() && !now.Before(d) {
		return CutAge
	}
	return ""
}

// Ripe is when the open batch may be cut early, for an idle sink: its
// linger after its first event (Policy.MinAge while the sink keeps up);
// zero when it is empty or the early cut is off.
func (b *Builder) Ripe() time.Time {
	if b.cur.Len() == 0 || b.policy.MinAge <= 0 {
		return time.Time{}
	}
	return b.opened.Add(b.linger)
}

// Paced says how the batch being cut met the shard's sink, and sets how
// long the next batches linger. waited: the batch was ripe before the
// sink was idle (or reached MaxAge while it was busy), so the sink is
// what sets the pace; cutting the moment it turns idle would give it a
// batch of one insert's time, and on a loaded server inserts of small
// parts cost more per row than they take time to fill (ClickHouse pays
// per column of every part). The linger doubles, up to MaxAge, and a
// saturated sink gets larger, cheaper batches. Otherwise the sink waited
// for the batch: the linger halves, down to MinAge, and an idle sink
// gets small batches at once. A Kafka producer's linger and the
// OpenTelemetry batch processor's timeout are fixed; this one follows
// the sink.
func (b *Builder) Paced(waited bool) {
	if b.policy.MinAge <= 0 {
		return
	}
	if waited {
		b.linger = min(2*b.linger, b.policy.MaxAge)
	} else {
		b.linger = max(b.linger/2, b.policy.MinAge)
	}
}

// Linger is how old a batch must be before an idle sink cuts it now.
func (b *Builder) Linger() time.Duration { return b.linger }

// Len is the number of rows waiting.
func (b *Builder) Len() int { return b.cur.Len() }

// Bytes is the event bytes waiting.
func (b *Builder) Bytes() int { return b.bytes }

// Deadline is when the current batch must be cut by age; zero when empty.
func (b *Builder) Deadline() time.Time {
	if b.cur.Len() == 0 {
		return time.Time{}
	}
	return b.opened.Add(b.policy.MaxAge)
}

// Cut returns the current batch and starts a new one; nil when empty.
func (b *Builder) Cut() *Batch {
	if b.cur.Len() == 0 {
		return nil
	}
	out := b.cur
	// The next batch is sized like this one: under load batches are cut
	// full, and growing ten columns by appends copied each of them about
	// twice over.
	b.cur = newBatch(b.shard, min(out.Len(), b.policy.MaxRows))
	b.bytes = 0
	return out
}
