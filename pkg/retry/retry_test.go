package retry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		c    Config
		want []string
	}{
		{name: "default", c: DefaultConfig(5 * time.Second)},
		{name: "no jitter is allowed", c: Config{Initial: time.Millisecond, Max: time.Second, Multiplier: 1}},
		{
			name: "every problem",
			c:    Config{Initial: 0, Max: -1, Multiplier: 0.5, RandomizationFactor: 1},
			want: []string{"initial must be positive", "max must be at least initial", "multiplier must be at least 1", "randomization_factor must be in [0, 1)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			for _, w := range tt.want {
				require.ErrorContains(t, err, w)
			}
		})
	}
}

func TestWaitsGrowWithJitterUpToMax(t *testing.T) {
	c := Config{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, RandomizationFactor: 0.2}
	b := c.NewBackOff()
	base := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, ms := range base {
		want := ms * time.Millisecond
		got := b.NextBackOff()
		lo, hi := time.Duration(float64(want)*0.8), time.Duration(float64(want)*1.2)+1
		require.True(t, got >= lo && got <= hi, "wait %d: %s not in [%s, %s]", i+1, got, lo, hi)
		require.LessOrEqual(t, got, c.MaxWait())
	}
	b.Reset()
	require.LessOrEqual(t, b.NextBackOff(), 120*time.Millisecond+1, "Reset starts over")
}

func TestJitterSpreadsWaits(t *testing.T) {
	c := DefaultConfig(time.Second)
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[c.Delay(3)] = true
	}
	require.Greater(t, len(seen), 1, "twenty loops must not all wait the same")
}

func TestDelay(t *testing.T) {
	c := Config{Initial: 100 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2}
	require.Equal(t, 100*time.Millisecond, c.Delay(0))
	require.Equal(t, 100*time.Millisecond, c.Delay(1))
	require.Equal(t, 400*time.Millisecond, c.Delay(3))
	require.Equal(t, 30*time.Second, c.Delay(1000))
}

func TestDo(t *testing.T) {
	fast := Config{Initial: time.Microsecond, Max: time.Microsecond, Multiplier: 1}
	errFlaky := errors.New("flaky")

	t.Run("retries until success and notifies each failure", func(t *testing.T) {
		calls := 0
		var notified []int
		err := Do(t.Context(), fast, func() error {
			calls++
			if calls < 3 {
				return errFlaky
			}
			return nil
		}, func(attempt int, err error, _ time.Duration) {
			require.ErrorIs(t, err, errFlaky)
			notified = append(notified, attempt)
		})
		require.NoError(t, err)
		require.Equal(t, 3, calls)
		require.Equal(t, []int{1, 2}, notified)
	})

	t.Run("a permanent error stops at once", func(t *testing.T) {
		calls := 0
		errBad := errors.New("bad")
		err := Do(t.Context(), fast, func() error { calls++; return Permanent(errBad) }, nil)
		require.ErrorIs(t, err, errBad)
		require.Equal(t, 1, calls)
	})

	t.Run("the end of ctx stops and keeps the last error", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		calls := 0
		err := Do(ctx, fast, func() error {
			calls++
			if calls == 5 {
				cancel()
			}
			return errFlaky
		}, nil)
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, err, errFlaky)
		require.Equal(t, 5, calls)
	})
}

func TestSleep(t *testing.T) {
	require.True(t, Sleep(t.Context(), time.Microsecond))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.False(t, Sleep(ctx, time.Hour))
}
