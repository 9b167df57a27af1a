package shard

import (
	"errors"
	"fmt"
	"time"
)

// MaxShards is the most logical shards Surge supports: ClickHouse stores
// the shard in a UInt16 column.
const MaxShards = 65535

// The ownership modes.
const (
	// ModeStatic: each instance works on the shards its configuration
	// lists (owned_shards, or all of them); one owner per shard is the
	// operator's duty. The empty mode is static.
	ModeStatic = "static"
	// ModeLease: the shards spread over the live instances of the service
	// by themselves, each held with a lease in a JetStream key-value
	// bucket (package lease).
	ModeLease = "lease"
)

// MinLeaseTTL is the shortest lease_ttl: renewals run every third of it
// and a request to JetStream must fit in a quarter.
const MinLeaseTTL = time.Second

// DefaultLeaseTTL is the default lease_ttl: a dead instance's shards move
// to a survivor about this long after its last renewal.
const DefaultLeaseTTL = 10 * time.Second

// Ownership says how many logical shards there are and which of them one
// instance of a per-shard service (batcher, sink) works on. Embed it
// inline: its keys are shards / SURGE_SHARDS, owned_shards /
// SURGE_OWNED_SHARDS, ownership / SURGE_OWNERSHIP and lease_ttl /
// SURGE_LEASE_TTL.
type Ownership struct {
	// Shards is the number of logical shards; partitioner, batcher and
	// sink must agree.
	Shards int `yaml:"shards" env:"SHARDS"`
	// Owned lists the shards this instance works on in static mode;
	// empty means all. Each shard must have exactly one running owner.
	Owned []int `yaml:"owned_shards" env:"OWNED_SHARDS"`
	// Mode is static (the default: Owned says) or lease (the live
	// instances share the shards by leases, see package lease).
	Mode string `yaml:"ownership" env:"OWNERSHIP"`
	// LeaseTTL is how long a lease lives without renewal in lease mode:
	// the bound on how long a dead instance's shards wait for a new owner.
	// Every instance of a service must use the same value; the bucket
	// keeps the TTL it was created with.
	LeaseTTL time.Duration `yaml:"lease_ttl" env:"LEASE_TTL"`
}

// DefaultOwnership is 8 shards, static, all owned, with the default
// lease TTL ready for lease mode.
func DefaultOwnership() Ownership {
	return Ownership{Shards: 8, Mode: ModeStatic, LeaseTTL: DefaultLeaseTTL}
}

// Leased reports whether the shards are shared by leases.
func (o Ownership) Leased() bool { return o.Mode == ModeLease }

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
	switch o.Mode {
	case "", ModeStatic:
	case ModeLease:
		if len(o.Owned) > 0 {
			errs = append(errs, errors.New("owned_shards applies to static ownership only: leases choose the shards"))
		}
		if o.LeaseTTL < MinLeaseTTL {
			errs = append(errs, fmt.Errorf("lease_ttl must be at least %s, got %s", MinLeaseTTL, o.LeaseTTL))
		}
	default:
		errs = append(errs, fmt.Errorf("ownership must be %s or %s, got %q", ModeStatic, ModeLease, o.Mode))
	}
	return errors.Join(errs...)
}

// OwnedShards is the shards this instance works on in static mode, in the
// order given: Owned, or all of them.
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
