package lease

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAssignSpreadsEvenly checks every shard has one member and the
// counts differ by at most one, for the members the Owner tests use too.
func TestAssignSpreadsEvenly(t *testing.T) {
	tests := []struct {
		name    string
		shards  int
		members []string
		counts  []int // sorted
	}{
		{name: "one member", shards: 8, members: []string{"a"}, counts: []int{8}},
		{name: "two members", shards: 8, members: []string{"a", "b"}, counts: []int{4, 4}},
		{name: "three members", shards: 8, members: []string{"a", "b", "c"}, counts: []int{2, 3, 3}},
		{name: "duplicates count once", shards: 8, members: []string{"b", "a", "b"}, counts: []int{4, 4}},
		{name: "more members than shards", shards: 2, members: []string{"a", "b", "c"}, counts: []int{1, 1}},
		{name: "no members", shards: 8, members: nil, counts: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Assign(tt.shards, tt.members)
			var counts []int
			seen := make(map[int]string)
			for m, ks := range got {
				require.True(t, slices.IsSorted(ks))
				counts = append(counts, len(ks))
				for _, k := range ks {
					require.NotContains(t, seen, k, "shard %d twice", k)
					seen[k] = m
				}
			}
			slices.Sort(counts)
			require.Equal(t, tt.counts, counts)
			if len(tt.members) > 0 {
				require.Len(t, seen, tt.shards)
			}
		})
	}
}

// TestAssignIsDeterministic checks the order of members does not matter:
// every instance computes the same map.
func TestAssignIsDeterministic(t *testing.T) {
	require.Equal(t, Assign(64, []string{"x", "y", "z"}), Assign(64, []string{"z", "x", "y"}))
}

// TestAssignMovesFewShardsOnAJoin checks a join moves about the new
// member's share: at most 1.2 times shards/(n+1) on average over many sets
// of random-looking names, and every moved shard goes to the new member
// or makes room for it.
func TestAssignMovesFewShardsOnAJoin(t *testing.T) {
	for _, tt := range []struct{ shards, n int }{{8, 1}, {8, 2}, {64, 2}, {64, 3}, {256, 4}} {
		t.Run(fmt.Sprintf("%d_shards_%d_to_%d", tt.shards, tt.n, tt.n+1), func(t *testing.T) {
			const sets = 50
			moved := 0
			for s := range sets {
				members := make([]string, tt.n)
				for i := range members {
					members[i] = fmt.Sprintf("host-%d-%d", s, i)
				}
				before := owners(Assign(tt.shards, members))
				joined := fmt.Sprintf("host-%d-new", s)
				after := owners(Assign(tt.shards, append(members, joined)))
				for k := range tt.shards {
					if before[k] != after[k] {
						moved++
					}
				}
			}
			ideal := float64(tt.shards) / float64(tt.n+1)
			mean := float64(moved) / sets
			t.Logf("moved %.2f shards on average, ideal %.2f", mean, ideal)
			require.LessOrEqual(t, mean, 1.2*ideal)
		})
	}
}

func owners(a map[string][]int) map[int]string {
	out := make(map[int]string)
	for m, ks := range a {
		for _, k := range ks {
			out[k] = m
		}
	}
	return out
}
