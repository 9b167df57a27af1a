package batch

import (
	"time"

	"github.com/surge-events/surge/pkg/event"
)

// Builder collects whole EVENTS messages of one shard until the policy says
// the batch is complete. A message is never split across batches, so a
// batch is exactly a sequence range. Not safe for concurrent use: one
// shard loop owns it.
type Builder struct {
	policy Policy
	shard  int
	cur    *Batch
	bytes  int
	opened time.Time
}

// NewBuilder starts an empty builder for shard.
func NewBuilder(shard int, p Policy) *Builder {
	return &Builder{policy: p, shard: shard, cur: &Batch{Shard: shard}}
}

// Fits reports whether a message of rows events and size bytes can join
// the current batch without passing a limit. An empty batch takes any
// message, so an oversized message still moves on, alone.
func (b *Builder) Fits(rows, size int) bool {
	if b.cur.Len() == 0 {
		return true
	}
	return b.cur.Len()+rows <= b.policy.MaxRows && b.bytes+size <= b.policy.MaxBytes
}

// Add appends the message with stream sequence seq and reports whether the
// batch is now full and should be cut.
func (b *Builder) Add(seq uint64, events []event.Event, now time.Time) (full bool) {
	if b.cur.Len() == 0 {
		b.opened = now
	}
	b.cur.Append(seq, events)
	for i := range events {
		b.bytes += events[i].Size()
	}
	return b.cur.Len() >= b.policy.MaxRows || b.bytes >= b.policy.MaxBytes
}

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
	b.cur = &Batch{Shard: b.shard}
	b.bytes = 0
	return out
}
