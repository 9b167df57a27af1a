package shard

import (
	"errors"
	"fmt"
)

// MaxShards is the most logical shards Surge supports: ClickHouse stores
// the shard in a UInt16 column.
const MaxShards = 65535

// Ownership says how many logical shards there are and which of them one
// instance of a per-shard service (batcher, sink) works on. Embed it
// inline: its keys are shards / SURGE_SHARDS and owned_shards /
// SURGE_OWNED_SHARDS.
type Ownership struct {
	// Shards is the number of logical shards; partitioner, batcher and
	// sink must agree.
	Shards int `yaml:"shards" env:"SHARDS"`
	// Owned lists the shards this instance works on; empty means all.
	// Each shard must have exactly one running owner.
	Owned []int `yaml:"owned_shards" env:"OWNED_SHARDS"`
}

// Validate reports every problem of the shard settings.
func (o Ownership) Validate() error {
	var errs []error
	if o.Shards < 1 || o.Shards > MaxShards {
		errs = append(errs, fmt.Errorf("shards must be 1 to %d, got %d", MaxShards, o.Shards))
	}
	seen := make(map[int]bool, len(o.Owned))
	for _, k := range o.Owned {
		switch {
		case k < 0 || k >= o.Shards:
			errs = append(errs, fmt.Errorf("owned_shards: shard %d is not in [0, %d)", k, o.Shards))
		case seen[k]:
			errs = append(errs, fmt.Errorf("owned_shards: shard %d is listed twice", k))
		}
		seen[k] = true
	}
	return errors.Join(errs...)
}

// OwnedShards is the shards this instance works on, in the order given:
// Owned, or all of them.
func (o Ownership) OwnedShards() []int {
	if len(o.Owned) > 0 {
		return o.Owned
	}
	out := make([]int, o.Shards)
	for k := range out {
		out[k] = k
	}
	return out
}
