package batch

import (
	"fmt"
	"slices"
	"time"

	"github.com/surge-events/surge/pkg/event"
)

// Batch is a contiguous run of one shard's EVENTS messages, held by column.
// Every row carries the EVENTS stream sequence of the message it came in.
type Batch struct {
	Shard    int
	FirstSeq uint64
	LastSeq  uint64

	EventID    []string
	Tenant     []string
	UserID     []string
	Type       []string
	TS         []int64 // unix microseconds
	ReceivedAt []int64 // unix microseconds
	Properties []string
	Seq        []uint64

	// Conflicts holds, per row, the property values that did not fit their
	// typed column, as a compact JSON object keyed by JSON Pointer ("" when
	// none); Unpromoted lists, per row, the paths of properties left out of
	// the typed columns. Both are empty (nil) when the batch was not
	// projected.
	Conflicts  []string
	Unpromoted [][]string
	// Typed are the typed property columns, in name order: only columns
	// with a value in some row of the batch.
	Typed []Column
}

// Projected reports whether the batch carries the typed projection of its
// properties (Conflicts, Unpromoted and Typed).
func (b *Batch) Projected() bool { return b.Conflicts != nil }

// ID names the batch by shard and sequence range: the same events always
// make the same id, so a re-published batch is dropped as a duplicate.
func (b *Batch) ID() string { return ID(b.Shard, b.FirstSeq, b.LastSeq) }

// ID formats a batch id.
func ID(shard int, first, last uint64) string { return fmt.Sprintf("%d:%d-%d", shard, first, last) }

// Len is the number of rows.
func (b *Batch) Len() int { return len(b.EventID) }

// Append adds the events of the EVENTS message with stream sequence seq.
func (b *Batch) Append(seq uint64, events []event.Event) {
	if b.Len() == 0 {
		b.FirstSeq = seq
	}
	b.LastSeq = seq
	for i := range events {
		e := &events[i]
		b.EventID = append(b.EventID, e.EventID)
		b.Tenant = append(b.Tenant, e.Tenant)
		b.UserID = append(b.UserID, e.UserID)
		b.Type = append(b.Type, e.Type)
		b.TS = append(b.TS, e.TS.UnixMicro())
		b.ReceivedAt = append(b.ReceivedAt, e.ReceivedAt.UnixMicro())
		b.Properties = append(b.Properties, e.Properties)
		b.Seq = append(b.Seq, seq)
	}
}

// After returns the rows whose sequence is above watermark, sharing storage
// with b. Rows are in sequence order, so they form a suffix.
func (b *Batch) After(watermark uint64) *Batch {
	i := 0
	for i < len(b.Seq) && b.Seq[i] <= watermark {
		i++
	}
	if i == 0 {
		return b
	}
	out := &Batch{
		Shard: b.Shard, LastSeq: b.LastSeq,
		EventID: b.EventID[i:], Tenant: b.Tenant[i:], UserID: b.UserID[i:], Type: b.Type[i:],
		TS: b.TS[i:], ReceivedAt: b.ReceivedAt[i:], Properties: b.Properties[i:], Seq: b.Seq[i:],
	}
	if len(out.Seq) > 0 {
		out.FirstSeq = out.Seq[0]
	}
	if b.Projected() {
		rows := make([]int, 0, len(b.Seq)-i)
		for r := i; r < len(b.Seq); r++ {
			rows = append(rows, r)
		}
		b.pickProjection(out, rows)
	}
	return out
}

// pickProjection copies the projection of rows into out.
func (b *Batch) pickProjection(out *Batch, rows []int) {
	out.Conflicts = make([]string, 0, len(rows))
	out.Unpromoted = make([][]string, 0, len(rows))
	for _, r := range rows {
		out.Conflicts = append(out.Conflicts, b.Conflicts[r])
		out.Unpromoted = append(out.Unpromoted, b.Unpromoted[r])
	}
	out.Typed = nil
	for i := range b.Typed {
		c := b.Typed[i].pick(rows)
		if c.hasValue() {
			out.Typed = append(out.Typed, c)
		}
	}
}

// Without returns the rows whose sequence is not in drop, as a batch
// whose sequence range is theirs. When it drops none (what a read of the
// rows present mostly finds), the batch shares b's storage, as After's
// does.
func (b *Batch) Without(drop map[uint64]struct{}) *Batch {
	if !slices.ContainsFunc(b.Seq, func(seq uint64) bool { _, ok := drop[seq]; return ok }) {
		if len(b.Seq) == 0 {
			return b.pick(nil)
		}
		out := *b
		out.FirstSeq, out.LastSeq = b.Seq[0], b.Seq[len(b.Seq)-1]
		return &out
	}
	rows := make([]int, 0, len(b.Seq))
	for i, seq := range b.Seq {
		if _, ok := drop[seq]; !ok {
			rows = append(rows, i)
		}
	}
	out := b.pick(rows)
	if len(out.Seq) > 0 {
		out.FirstSeq, out.LastSeq = out.Seq[0], out.Seq[len(out.Seq)-1]
	}
	return out
}

// newBatch is an empty batch of shard with room for rows rows.
func newBatch(shard, rows int) *Batch {
	return &Batch{
		Shard:   shard,
		EventID: make([]string, 0, rows), Tenant: make([]string, 0, rows), UserID: make([]string, 0, rows), Type: make([]string, 0, rows),
		TS: make([]int64, 0, rows), ReceivedAt: make([]int64, 0, rows), Properties: make([]string, 0, rows), Seq: make([]uint64, 0, rows),
	}
}

// pick copies rows (indices into b, in order) into a new batch of b's
// shard, with their projection; the caller sets the sequence range.
func (b *Batch) pick(rows []int) *Batch {
	out := &Batch{Shard: b.Shard}
	if n := len(rows); n > 0 { // no rows: nil columns, as an empty batch has
		out.EventID, out.Tenant, out.UserID, out.Type = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		out.TS, out.ReceivedAt, out.Properties, out.Seq = make([]int64, n), make([]int64, n), make([]string, n), make([]uint64, n)
	}
	for j, i := range rows {
		out.EventID[j], out.Tenant[j], out.UserID[j], out.Type[j] = b.EventID[i], b.Tenant[i], b.UserID[i], b.Type[i]
		out.TS[j], out.ReceivedAt[j], out.Properties[j], out.Seq[j] = b.TS[i], b.ReceivedAt[i], b.Properties[i], b.Seq[i]
	}
	if b.Projected() {
		b.pickProjection(out, rows)
	}
	return out
}

// Times converts a microsecond column to times, for drivers that want them.
func Times(us []int64) []time.Time {
	out := make([]time.Time, len(us))
	for i, v := range us {
		out[i] = time.UnixMicro(v).UTC()
	}
	return out
}
