// Package batch cuts per-shard runs of events into batches and encodes them
// in a compressed columnar form for the trip from batcher to sink.
package batch

import (
	"errors"
	"fmt"
	"time"
)

// Policy says when a batch is complete: whichever limit is reached first.
type Policy struct {
	// MaxRows is the most events in a batch.
	MaxRows int `yaml:"max_rows" env:"MAX_ROWS"`
	// MaxBytes is the most event bytes (before encoding) in a batch.
	MaxBytes int `yaml:"max_bytes" env:"MAX_BYTES"`
	// MaxAge is the longest the first event of a batch waits for the cut.
	MaxAge time.Duration `yaml:"max_age" env:"MAX_AGE"`
	// MinAge cuts a batch before MaxAge: once its first event has waited
	// MinAge, it is cut as soon as the shard's sink has landed every batch
	// before it (the sink is idle). A busy sink lets the batch grow to
	// MaxRows, MaxBytes or MaxAge, so batches are small only while the
	// sink has time for more inserts, as a Kafka producer's linger or the
	// OpenTelemetry batch processor's timeout. MinAge is the least linger:
	// while batches wait for the sink it doubles, up to MaxAge, and while
	// the sink waits for them it halves back (Builder.Paced). 0 turns the
	// early cut off, as does a MinAge at or above MaxAge.
	MinAge time.Duration `yaml:"min_age" env:"MIN_AGE"`
}

// DefaultPolicy suits ClickHouse: inserts of thousands of rows, at most
// about one per second per shard under load, and about five a second
// per shard while the sink is idle.
func DefaultPolicy() Policy {
	return Policy{MaxRows: 10000, MaxBytes: 8 << 20, MaxAge: time.Second, MinAge: 200 * time.Millisecond}
}

// Validate reports every problem of the policy.
func (p Policy) Validate() error {
	var errs []error
	if p.MaxRows < 1 {
		errs = append(errs, fmt.Errorf("max_rows must be at least 1, got %d", p.MaxRows))
	}
	if p.MaxBytes < 1024 {
		errs = append(errs, fmt.Errorf("max_bytes must be at least 1024, got %d", p.MaxBytes))
	}
	if p.MaxAge <= 0 {
		errs = append(errs, fmt.Errorf("max_age must be positive, got %s", p.MaxAge))
	}
	if p.MinAge < 0 {
		errs = append(errs, fmt.Errorf("min_age must be 0 (off) or positive, got %s", p.MinAge))
	}
	return errors.Join(errs...)
}
