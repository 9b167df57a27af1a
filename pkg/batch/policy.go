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
}

// DefaultPolicy suits ClickHouse: inserts of thousands of rows, at most
// about one per second per shard.
func DefaultPolicy() Policy {
	return Policy{MaxRows: 10000, MaxBytes: 8 << 20, MaxAge: time.Second}
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
	return errors.Join(errs...)
}
