package lease

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// Assign maps shards 0..shards-1 onto members by rendezvous (highest
// random weight) hashing with bounded loads: each shard goes to the member
// that scores it highest among those not yet holding ceil(shards/members)
// shards. Every instance that sees the same members computes the same
// map, the spread is as even as it can be (counts differ by at most one),
// and a join or a death moves few shards: a shard stays with its member
// unless that member left or a fuller share must make room.
//
// The result lists, per member, its shards in ascending order; members is
// not changed and may hold duplicates (they count once).
func Assign(shards int, members []string) map[string][]int {
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	out := make(map[string][]int, len(ms))
	if len(ms) == 0 || shards <= 0 {
		return out
	}
	limit := (shards + len(ms) - 1) / len(ms)
	type ranked struct {
		member string
		score  uint64
	}
	rank := make([]ranked, len(ms))
	for k := range shards {
		for i, m := range ms {
			rank[i] = ranked{m, score(m, k)}
		}
		slices.SortFunc(rank, func(a, b ranked) int {
			if c := cmp.Compare(b.score, a.score); c != 0 {
				return c
			}
			return cmp.Compare(a.member, b.member)
		})
		for _, r := range rank {
			if len(out[r.member]) < limit {
				out[r.member] = append(out[r.member], k)
				break
			}
		}
	}
	return out
}

// score is the weight of member for shard k.
func score(member string, k int) uint64 {
	d := xxhash.New()
	_, _ = d.WriteString(member)
	_, _ = d.Write([]byte{0})
	_, _ = d.WriteString(strconv.Itoa(k))
	return d.Sum64()
}
