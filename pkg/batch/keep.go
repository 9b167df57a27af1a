package batch

// Keep returns the rows for which keep is true, as a new batch with the
// same shard and sequence range (a dead letter rewritten without some rows
// still names the messages it came from).
func (b *Batch) Keep(keep func(row int) bool) *Batch {
	rows := make([]int, 0, len(b.Seq))
	for i := range b.Seq {
		if keep(i) {
			rows = append(rows, i)
		}
	}
	out := b.pick(rows)
	out.FirstSeq, out.LastSeq = b.FirstSeq, b.LastSeq
	return out
}
