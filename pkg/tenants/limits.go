// Package tenants holds what Surge knows of each tenant beyond its keys:
// its quotas, kept in a JetStream key-value bucket (Bucket) that every
// ingest instance watches, so a change applies within moments everywhere
// without a restart; and the token buckets that apply them (Quota).
package tenants

import (
	"errors"
	"fmt"
	"math"
)

// Limits are one tenant's quotas. A zero rate is no limit.
type Limits struct {
	// EventsPerSecond is the sustained rate of events accepted.
	EventsPerSecond float64 `json:"events_per_second,omitempty" yaml:"events_per_second" env:"EVENTS_PER_SECOND"`
	// Burst is how many events may be accepted at once above the rate
	// (the bucket's size); 0 is one second's worth.
	Burst float64 `json:"burst,omitempty" yaml:"burst" env:"BURST"`
	// BytesPerSecond is the sustained rate of request bytes (after
	// decompression) accepted.
	BytesPerSecond float64 `json:"bytes_per_second,omitempty" yaml:"bytes_per_second" env:"BYTES_PER_SECOND"`
	// BytesBurst is the byte bucket's size; 0 is one second's worth.
	BytesBurst float64 `json:"bytes_burst,omitempty" yaml:"bytes_burst" env:"BYTES_BURST"`
}

// Unlimited says no quota applies.
func (l Limits) Unlimited() bool { return l.EventsPerSecond == 0 && l.BytesPerSecond == 0 }

// Validate reports every problem of the limits.
func (l Limits) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"events_per_second", l.EventsPerSecond}, {"burst", l.Burst},
		{"bytes_per_second", l.BytesPerSecond}, {"bytes_burst", l.BytesBurst},
	} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			errs = append(errs, fmt.Errorf("%s must be a finite number, 0 or more, got %v", f.name, f.v))
		}
	}
	if l.Burst > 0 && l.EventsPerSecond == 0 {
		errs = append(errs, errors.New("burst needs events_per_second"))
	}
	if l.BytesBurst > 0 && l.BytesPerSecond == 0 {
		errs = append(errs, errors.New("bytes_burst needs bytes_per_second"))
	}
	return errors.Join(errs...)
}

// eventsBurst and bytesBurst are the buckets' sizes.
func (l Limits) eventsBurst() float64 { return orRate(l.Burst, l.EventsPerSecond) }
func (l Limits) bytesBurst() float64  { return orRate(l.BytesBurst, l.BytesPerSecond) }

func orRate(burst, rate float64) float64 {
	if burst > 0 {
		return burst
	}
	return rate
}

// share is l divided over n instances, each of which applies its part:
// the rates and the bursts alike.
func (l Limits) share(n int) Limits {
	if n <= 1 {
		return l
	}
	f := float64(n)
	return Limits{EventsPerSecond: l.EventsPerSecond / f, Burst: l.eventsBurst() / f, BytesPerSecond: l.BytesPerSecond / f, BytesBurst: l.bytesBurst() / f}
}
