package shard_test

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/shard"
)

// TestGolden pins the mapping: events already in a shard must stay
// findable there, so a change of hash, separator or jump is a data
// migration, never a refactor.
func TestGolden(t *testing.T) {
	for _, tt := range []struct {
		tenant, user string
		key          uint64
		of8, of1024  int
	}{
		{"acme", "user-1", 0x6be100453cdfdbb8, 3, 1017},
		{"acme", "user-2", 0x5156cd775d3ef5d0, 7, 407},
		{"globex", "42", 0x634743e65652fcf7, 7, 678},
		{"", "", 0xe934a84adb052768, 5, 687},
		{"tenant", "ü-unicode", 0xe52e60880e9ab7ec, 2, 60},
	} {
		t.Run(tt.tenant+"/"+tt.user, func(t *testing.T) {
			require.Equal(t, tt.key, shard.Key(tt.tenant, tt.user))
			require.Equal(t, tt.of8, shard.Of(tt.tenant, tt.user, 8))
			require.Equal(t, tt.of1024, shard.Of(tt.tenant, tt.user, 1024))
			require.Equal(t, 0, shard.Of(tt.tenant, tt.user, 1))
		})
	}
}

// TestKeySeparatesTenantFromUser checks that the separator keeps
// ("ab","c") and ("a","bc") apart.
func TestKeySeparatesTenantFromUser(t *testing.T) {
	require.NotEqual(t, shard.Key("ab", "c"), shard.Key("a", "bc"))
}

// TestGrowingMovesFewKeys checks the property jump hash is chosen for:
// from n to n+1 shards about 1/(n+1) of the keys move, all of them to the
// new shard n.
func TestGrowingMovesFewKeys(t *testing.T) {
	const keys = 200_000
	hashes := make([]uint64, keys)
	for i := range hashes {
		hashes[i] = shard.Key("tenant", "user-"+strconv.Itoa(i))
	}
	for _, n := range []int{1, 2, 7, 8, 15, 63} {
		t.Run(fmt.Sprintf("%d_to_%d", n, n+1), func(t *testing.T) {
			moved := 0
			for _, h := range hashes {
				before, after := shard.Jump(h, n), shard.Jump(h, n+1)
				if before != after {
					require.Equal(t, n, after, "a moved key goes to the new shard")
					moved++
				}
			}
			want := float64(keys) / float64(n+1)
			require.InDelta(t, want, float64(moved), want*0.05, "moved %d of %d", moved, keys)
		})
	}
}

// TestUniform checks every one of 8 shards gets within 5% of its share of
// 1,000,000 keys.
func TestUniform(t *testing.T) {
	const keys, shards = 1_000_000, 8
	counts := make([]int, shards)
	for i := range keys {
		counts[shard.Of("tenant-"+strconv.Itoa(i%7), "user-"+strconv.Itoa(i), shards)]++
	}
	const share = keys / shards
	for k, c := range counts {
		require.GreaterOrEqual(t, c, share*95/100, "shard %d: %d keys", k, c)
		require.LessOrEqual(t, c, share*105/100, "shard %d: %d keys", k, c)
	}
}

func TestJumpRange(t *testing.T) {
	for _, n := range []int{1, 2, 3, 8, 100, 65535} {
		for i := range 1000 {
			k := shard.Jump(uint64(i)*0x9e3779b97f4a7c15, n)
			require.GreaterOrEqual(t, k, 0)
			require.Less(t, k, n)
		}
	}
}

func BenchmarkOf(b *testing.B) {
	users := make([]string, 1024)
	for i := range users {
		users[i] = "user-" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		_ = shard.Of("acme", users[i&1023], 8)
	}
}

func ExampleOf() {
	fmt.Println(shard.Of("acme", "user-1", 8))
	// Output: 3
}
