package natscluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestFeedOnceAndFirstAckedAfter(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	// Messages 0-3 acked, message 4 interrupted by Stop.
	f := &Feed{sent: 5}
	for n := range 4 {
		f.acked = append(f.acked, Acked{N: n, Seq: uint64(n + 1), At: t0.Add(time.Duration(n) * time.Second)})
	}
	ids := func(n int) []string { return []string{fmt.Sprintf("m%d-a", n), fmt.Sprintf("m%d-b", n)} }
	seen := func(extra map[string]int) map[string]int {
		s := map[string]int{}
		for n := range 4 {
			for _, id := range ids(n) {
				s[id] = 1
			}
		}
		for id, c := range extra {
			s[id] = c
		}
		return s
	}
	assert.NoError(t, f.Once(seen(nil), ids), "the interrupted message not stored")
	assert.NoError(t, f.Once(seen(map[string]int{"m4-a": 1, "m4-b": 1}), ids), "the interrupted message stored")
	assert.EqualError(t, f.Once(seen(map[string]int{"m2-b": 0}), ids), "id m2-b of acked message 2 seen 0 times, want once")
	assert.EqualError(t, f.Once(seen(map[string]int{"m1-a": 2}), ids), "id m1-a of acked message 1 seen 2 times, want once")
	assert.EqualError(t, f.Once(seen(map[string]int{"m4-a": 2}), ids), "id m4-a of interrupted message 4 seen 2 times, want at most once")
	assert.EqualError(t, f.Once(seen(map[string]int{"stray": 1}), ids), "9 ids seen, 8 of them the feed's")

	first, ok := f.FirstAckedAfter(t0, 2, func(n int) int { return n % 2 })
	assert.True(t, ok)
	assert.Equal(t, []uint64{3, 2}, []uint64{first[0].Seq, first[1].Seq}, "after t0: message 2 first in group 0, 1 in group 1")
	_, ok = f.FirstAckedAfter(t0.Add(2*time.Second), 2, func(n int) int { return n % 2 })
	assert.False(t, ok, "group 0 has nothing acked after message 2")
}
