package shard

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestOwnership(t *testing.T) {
	tests := []struct {
		name  string
		o     Ownership
		owned []int
		errs  []string
	}{
		{name: "all by default", o: Ownership{Shards: 3}, owned: []int{0, 1, 2}},
		{name: "a subset in order", o: Ownership{Shards: 8, Owned: []int{5, 1}}, owned: []int{5, 1}},
		{name: "no shards", o: Ownership{Shards: 0}, errs: []string{"shards must be 1 to 65535, got 0"}},
		{name: "too many shards", o: Ownership{Shards: 65536}, errs: []string{"shards must be 1 to 65535, got 65536"}},
		{
			name: "outside and twice", o: Ownership{Shards: 4, Owned: []int{4, 1, 1, -1}},
			errs: []string{"owned_shards: shard 4 is not in [0, 4)", "owned_shards: shard 1 is listed twice", "owned_shards: shard -1 is not in [0, 4)"},
		},
		{name: "static by name", o: Ownership{Shards: 2, Mode: ModeStatic}, owned: []int{0, 1}},
		{name: "the default", o: DefaultOwnership(), owned: []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{name: "lease", o: Ownership{Shards: 2, Mode: ModeLease, LeaseTTL: MinLeaseTTL}, owned: []int{0, 1}},
		{
			name: "lease with owned shards and a short ttl", o: Ownership{Shards: 2, Owned: []int{1}, Mode: ModeLease, LeaseTTL: 500 * time.Millisecond},
			errs: []string{"owned_shards applies to static ownership only", "lease_ttl must be at least 1s, got 500ms"},
		},
		{name: "unknown mode", o: Ownership{Shards: 2, Mode: "elastic"}, errs: []string{`ownership must be static or lease, got "elastic"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.Validate()
			if len(tt.errs) == 0 {
				require.NoError(t, err)
				require.Equal(t, tt.owned, tt.o.OwnedShards())
				return
			}
			require.Error(t, err)
			for _, e := range tt.errs {
				require.Contains(t, err.Error(), e)
			}
		})
	}
}
