package batch

// Keep returns the rows for which keep is true, as a new batch with the
// same shard and sequence range (a dead letter rewritten without some rows
// still names the messages it came from).
func (b *Batch) Keep(keep func(row int) bool) *Batch {
	out := &Batch{Shard: b.Shard, FirstSeq: b.FirstSeq, LastSeq: b.LastSeq}
	var kept []int
	for i := range b.Seq {
		if !keep(i) {
			continue
		}
		kept = append(kept, i)
		out.EventID = append(out.EventID, b.EventID[i])
		out.Tenant = append(out.Tenant, b.Tenant[i])
		out.UserID = append(out.UserID, b.UserID[i])
		out.Type = append(out.Type, b.Type[i])
		out.TS = append(out.TS, b.TS[i])
		out.ReceivedAt = append(out.ReceivedAt, b.ReceivedAt[i])
		out.Properties = append(out.Properties, b.Properties[i])
		out.Seq = append(out.Seq, b.Seq[i])
	}
	if b.Projected() {
		b.pickProjection(out, kept)
	}
	return out
}
