// Package retry is the one retry policy of every Surge loop that waits and
// tries again: exponential backoff with jitter, on top of
// github.com/cenkalti/backoff/v5, behind a small validated config.
//
// Jitter matters here: eight sink shards that lose the same ClickHouse
// server, or partitioner workers whose publishes failed together, would
// otherwise retry in lockstep.
package retry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Config is an exponential backoff: the first wait is about Initial, each
// next one Multiplier times longer up to Max, each randomised by
// ±RandomizationFactor. Retries go on until they succeed, fail permanently
// or the context ends: a Surge hop never gives up on acknowledged data.
type Config struct {
	// Initial is the wait before the first retry.
	Initial time.Duration `yaml:"initial" env:"INITIAL"`
	// Max caps every wait.
	Max time.Duration `yaml:"max" env:"MAX"`
	// Multiplier grows the wait after each failed attempt.
	Multiplier float64 `yaml:"multiplier" env:"MULTIPLIER"`
	// RandomizationFactor spreads each wait over [w*(1-f), w*(1+f)].
	RandomizationFactor float64 `yaml:"randomization_factor" env:"RANDOMIZATION_FACTOR"`
}

// DefaultConfig waits 100ms at first, doubling up to max, with ±20% jitter.
func DefaultConfig(max time.Duration) Config {
	return Config{Initial: 100 * time.Millisecond, Max: max, Multiplier: 2, RandomizationFactor: 0.2}
}

// Validate reports every problem of the settings.
func (c Config) Validate() error {
	var errs []error
	if c.Initial <= 0 {
		errs = append(errs, fmt.Errorf("initial must be positive, got %s", c.Initial))
	}
	if c.Max < c.Initial {
		errs = append(errs, fmt.Errorf("max must be at least initial (%s), got %s", c.Initial, c.Max))
	}
	if c.Multiplier < 1 {
		errs = append(errs, fmt.Errorf("multiplier must be at least 1, got %g", c.Multiplier))
	}
	if c.RandomizationFactor < 0 || c.RandomizationFactor >= 1 {
		errs = append(errs, fmt.Errorf("randomization_factor must be in [0, 1), got %g", c.RandomizationFactor))
	}
	return errors.Join(errs...)
}

// MaxWait is the longest single wait the policy can produce, jitter included.
func (c Config) MaxWait() time.Duration {
	return time.Duration(float64(c.Max) * (1 + c.RandomizationFactor))
}

// NewBackOff returns a fresh backoff of this policy. It is not safe for
// concurrent use: give each loop its own, and Reset it after a success so
// that one bad hour does not make every later wait the longest.
func (c Config) NewBackOff() *backoff.ExponentialBackOff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     c.Initial,
		RandomizationFactor: c.RandomizationFactor,
		Multiplier:          c.Multiplier,
		MaxInterval:         c.Max,
	}
	b.Reset()
	return b
}

// Delay is the wait before attempt n (from 1) of something retried
// elsewhere, e.g. the NakWithDelay of a message delivered n times.
func (c Config) Delay(n int) time.Duration {
	b := c.NewBackOff()
	d := b.NextBackOff()
	for i := 1; i < min(n, 64); i++ {
		d = b.NextBackOff()
	}
	return d
}

// Permanent marks err as not worth retrying: Do returns it at once.
func Permanent(err error) error { return backoff.Permanent(err) }

// Do runs op until it returns nil, a Permanent error (returned unwrapped)
// or ctx ends (the last error of op, joined with the context's). Before
// each wait it calls notify, when not nil, with the attempt that failed
// (from 1), its error and the wait.
func Do(ctx context.Context, c Config, op func() error, notify func(attempt int, err error, wait time.Duration)) error {
	attempt := 0
	var last error
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		attempt++
		last = op()
		return struct{}{}, last
	},
		backoff.WithBackOff(c.NewBackOff()),
		backoff.WithMaxElapsedTime(0), // never give up while ctx lives
		backoff.WithNotify(func(err error, wait time.Duration) {
			if notify != nil {
				notify(attempt, err, wait)
			}
		}))
	if err != nil && ctx.Err() != nil && last != nil && !errors.Is(err, last) {
		return fmt.Errorf("%w (last attempt: %w)", err, last)
	}
	return err
}

// Sleep waits d or until ctx ends; it reports whether the wait completed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
