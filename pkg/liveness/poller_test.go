package liveness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

func TestPollEvery(t *testing.T) {
	for _, tc := range []struct {
		name        string
		stall, want time.Duration
	}{
		{"default: every 5 s", 30 * time.Second, 5 * time.Second},
		{"a fifth of the timeout", 2 * time.Second, 400 * time.Millisecond},
		{"at most every 10 ms", time.Millisecond, 10 * time.Millisecond},
		{"at least every 5 s", time.Hour, 5 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, PollEvery(tc.stall)) })
	}
}

// fakeUnit answers Backlog from a script and records the repairs.
type fakeUnit struct {
	w       *Watchdog
	mu      sync.Mutex
	backlog []result // one per round; the last repeats
	repairs []string
	failFix int // repairs to fail before one succeeds
}

type result struct {
	n   uint64
	err error
}

func (u *fakeUnit) Backlog(context.Context) (uint64, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.backlog[0]
	if len(u.backlog) > 1 {
		u.backlog = u.backlog[1:]
	}
	return r.n, r.err
}

func (u *fakeUnit) Watchdog() *Watchdog { return u.w }

func (u *fakeUnit) Repair(_ context.Context, why string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.repairs = append(u.repairs, why)
	if u.failFix > 0 {
		u.failFix--
		return errors.New("no responders")
	}
	return nil
}

// rounds runs p over units for n rounds, each one a tick of now, with
// what p remembers of the units in state.
func rounds(t *testing.T, p Poller, state map[Unit]*pollState, n int, now *time.Time, step time.Duration, units ...Unit) {
	t.Helper()
	for range n {
		*now = now.Add(step)
		for _, u := range units {
			if state[u] == nil {
				state[u] = &pollState{}
			}
			p.poll(t.Context(), u, state[u])
		}
	}
}

func TestPollerRepairsGoneAndStalledUnits(t *testing.T) {
	now := time.Unix(1000, 0)
	ready := readiness{}
	ws := newWatchdogs("sink", 10*time.Second, ready, zaptest.NewLogger(t), prometheus.NewRegistry(), func() time.Time { return now })
	p := Poller{Every: time.Second, Timeout: time.Second, Log: zaptest.NewLogger(t)}
	state := map[Unit]*pollState{}

	gone := &fakeUnit{w: ws.For("0"), backlog: []result{{err: fmt.Errorf("consumer info: %w", ErrGone)}, {n: 0}}, failFix: 1}
	stalled := &fakeUnit{w: ws.For("1"), backlog: []result{{n: 5}}}
	moving := &fakeUnit{w: ws.For("2"), backlog: []result{{n: 5}}}
	rounds(t, p, state, 1, &now, time.Second, gone, stalled, moving)
	require.Equal(t, []string{"gone"}, gone.repairs, "a gone consumer is made again at once")
	// The failed repair is asked again at the next round, though the
	// backlog now reads.
	rounds(t, p, state, 1, &now, time.Second, gone)
	require.Equal(t, []string{"gone", "gone"}, gone.repairs)
	rounds(t, p, state, 3, &now, time.Second, gone)
	require.Equal(t, []string{"gone", "gone"}, gone.repairs, "repaired: not again")

	// Shard 1 has a backlog and no progress for the stall timeout: one
	// repair per stall. Shard 2 moves.
	for range 12 {
		moving.w.Progress()
		rounds(t, p, state, 1, &now, time.Second, stalled, moving)
	}
	require.Equal(t, []string{"stalled"}, stalled.repairs)
	require.Empty(t, moving.repairs)
	require.Equal(t, []string{"stalled shard 1: 5 pending, no progress for 17s, waiting on start"}, ready.NotReadyReasons())
}

func TestPollerIdlesWhileNATSIsDown(t *testing.T) {
	now := time.Unix(1000, 0)
	ws := newWatchdogs("batcher", 10*time.Second, readiness{}, zaptest.NewLogger(t), prometheus.NewRegistry(), func() time.Time { return now })
	connected := false
	p := Poller{Every: time.Second, Timeout: time.Second, Log: zaptest.NewLogger(t), Connected: func() bool { return connected }}
	state := map[Unit]*pollState{}
	u := &fakeUnit{w: ws.For("0"), backlog: []result{{err: errors.New("nats: connection closed")}}}
	rounds(t, p, state, 30, &now, time.Second, u)
	// Back, with a backlog: the stall clock started again with the last
	// failed read, so a stall needs the whole timeout from there.
	connected = true
	u.backlog = []result{{n: 7}}
	rounds(t, p, state, 9, &now, time.Second, u)
	require.False(t, u.w.Stalled())
	rounds(t, p, state, 1, &now, time.Second, u)
	require.True(t, u.w.Stalled())
	require.Equal(t, []string{"stalled"}, u.repairs)
}

func TestPollerRunPollsTheUnitsItIsGiven(t *testing.T) {
	ws := NewWatchdogs("batcher", time.Hour, readiness{}, zaptest.NewLogger(t), prometheus.NewRegistry())
	polled := make(chan struct{}, 1)
	u := &signalUnit{fakeUnit: fakeUnit{w: ws.For("0"), backlog: []result{{err: ErrGone}}}, polled: polled}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Poller{Every: time.Millisecond, Timeout: time.Second, Log: zaptest.NewLogger(t)}.Run(ctx, func() []Unit { return []Unit{u} })
	}()
	for range 3 {
		select {
		case <-polled:
		case <-time.After(10 * time.Second):
			t.Fatal("the unit was not polled")
		}
	}
	cancel()
	<-done
	u.mu.Lock()
	defer u.mu.Unlock()
	require.GreaterOrEqual(t, len(u.repairs), 3, "each round repairs the gone consumer")
}

// signalUnit says each poll of it.
type signalUnit struct {
	fakeUnit
	polled chan struct{}
}

func (u *signalUnit) Repair(ctx context.Context, why string) error {
	err := u.fakeUnit.Repair(ctx, why)
	select {
	case u.polled <- struct{}{}:
	default:
	}
	return err
}
