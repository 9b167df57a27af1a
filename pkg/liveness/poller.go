package liveness

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// PollEvery is how often a Poller reads the backlogs for a stall timeout:
// a fifth of it, so a stall is noticed within 1.2 timeouts, and between
// every 10 ms and every 5 s (the pending gauges stay that fresh).
func PollEvery(stallTimeout time.Duration) time.Duration {
	return min(max(stallTimeout/5, 10*time.Millisecond), 5*time.Second)
}

// ErrGone says a unit's consumer is not on the server (a NATS server that
// lost its store, a consumer deleted by hand): it must be made again.
var ErrGone = errors.New("consumer gone")

// Unit is one unit of work a Poller watches: a shard's loop, the
// partitioner's input.
type Unit interface {
	// Backlog reads the unit's messages waiting or unacked, and keeps its
	// gauges current. An error wrapping ErrGone says its consumer is gone.
	Backlog(ctx context.Context) (uint64, error)
	// Watchdog is the unit's watchdog.
	Watchdog() *Watchdog
	// Repair makes the unit's consumer again, or has its loop make it,
	// because it is "gone" or "stalled". A failed repair is asked again at
	// the next round.
	Repair(ctx context.Context, why string) error
}

// Poller reads the backlog of every unit each Every, hands it to the
// unit's watchdog, and repairs a unit whose consumer is gone or that its
// watchdog finds stalled. While NATS is unreachable the watchdogs idle:
// the service's NATS readiness check says so, and the stall clock starts
// again once it is back.
type Poller struct {
	// Every is the period of the rounds (PollEvery of the stall timeout).
	Every time.Duration
	// Timeout bounds one round's reads and repairs: an unreachable server
	// delays the rounds, never piles them up.
	Timeout time.Duration
	// Connected says whether NATS is reachable; nil means always.
	Connected func() bool
	Log       *zap.Logger
}

// pollState is what a Poller remembers of a unit between rounds.
type pollState struct {
	repair   string // why its consumer must be made again; "" when not
	failures int    // backlog reads failed in a row
}

// Run polls the units that units returns, each round, until ctx ends;
// the first round is at once.
func (p Poller) Run(ctx context.Context, units func() []Unit) {
	t := time.NewTicker(p.Every)
	defer t.Stop()
	state := map[Unit]*pollState{}
	for {
		seen := make(map[Unit]bool)
		rctx, cancel := context.WithTimeout(ctx, p.Timeout)
		for _, u := range units() {
			seen[u] = true
			st := state[u]
			if st == nil {
				st = &pollState{}
				state[u] = st
			}
			p.poll(rctx, u, st)
		}
		cancel()
		for u := range state {
			if !seen[u] {
				delete(state, u) // a unit that stopped
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// poll is one unit's round.
func (p Poller) poll(ctx context.Context, u Unit, st *pollState) {
	n, err := u.Backlog(ctx)
	if err == nil {
		st.failures = 0
	} else {
		st.failures++
	}
	w := u.Watchdog()
	switch {
	case err == nil:
		if w.Check(n) && w.Repair() {
			st.repair = "stalled"
		}
	case errors.Is(err, ErrGone):
		st.repair = "gone"
	case p.Connected != nil && !p.Connected():
		w.Idle()
	case ctx.Err() == nil && st.failures&(st.failures-1) == 0: // the 1st, 2nd, 4th... in a row
		// Unread, the backlog escapes the watchdog: say so.
		p.Log.Warn("backlog read failed", zap.String("unit", w.unit), zap.Int("failures", st.failures), zap.Error(err))
	}
	if st.repair == "" || ctx.Err() != nil {
		return
	}
	if err := u.Repair(ctx, st.repair); err != nil {
		p.Log.Warn("repair consumer", zap.String("unit", w.unit), zap.String("why", st.repair), zap.Error(err))
		return
	}
	st.repair = ""
}
