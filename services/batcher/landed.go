package batcher

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/surge-events/surge/pkg/streams"
)

// sinkState is what the batcher knows of one shard's sink: how far it
// has landed, from the sink's notices on streams.LandedSubject, against
// how far this shard's batches were published. The sink is idle when it
// has landed every published batch; the shard loop then cuts its open
// batch once it is Policy.MinAge old (cutDue) instead of waiting for
// MaxRows or MaxAge. The notices are hints: one lost leaves the shard
// looking busy until the sink lands the next batch, which costs that
// batch its early cut and nothing else.
type sinkState struct {
	landed    atomic.Uint64 // highest EVENTS sequence the sink said it landed
	published atomic.Uint64 // last EVENTS sequence of the shard's newest published batch
	idleAt    atomic.Int64  // when a notice last found the sink idle, Unix ns

	mu   sync.Mutex
	wake *waiter // ends the shard loop's wait; nil while it waits for nothing
}

// waiter ends one wait of a shard loop.
type waiter struct{ cancel context.CancelCauseFunc }

// errSinkIdle is the cause a landing notice ends a shard loop's wait with.
var errSinkIdle = errors.New("the shard's sink is idle")

// idle reports whether the sink has landed every batch published so far.
func (s *sinkState) idle() bool { return s.landed.Load() >= s.published.Load() }

// idleSince is when a landing notice last found the sink idle; zero
// before any did.
func (s *sinkState) idleSince() time.Time {
	if n := s.idleAt.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// publishedThrough records a batch published up to seq.
func (s *sinkState) publishedThrough(seq uint64) {
	if seq > s.published.Load() {
		s.published.Store(seq)
	}
}

// landedThrough records the sink's notice and, when the sink is now idle,
// wakes the shard loop to cut its open batch.
func (s *sinkState) landedThrough(seq uint64) {
	for {
		cur := s.landed.Load()
		if seq <= cur || s.landed.CompareAndSwap(cur, seq) {
			break
		}
	}
	if !s.idle() {
		return
	}
	s.idleAt.Store(time.Now().UnixNano())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wake != nil {
		s.wake.cancel(errSinkIdle)
	}
}

// waitUntil is the context of the shard loop's next wait for a message:
// it ends at d (unless d is zero), with ctx, or when a landing notice
// finds the sink idle. The loop looks at the sink's state again after
// this call, so a notice that came just before it is not missed.
func (s *sinkState) waitUntil(ctx context.Context, d time.Time) (context.Context, context.CancelFunc) {
	timed, cancelTimed := until(ctx, d)
	wctx, cancel := context.WithCancelCause(timed)
	w := &waiter{cancel: cancel}
	s.mu.Lock()
	s.wake = w
	s.mu.Unlock()
	return wctx, func() {
		s.mu.Lock()
		if s.wake == w {
			s.wake = nil
		}
		s.mu.Unlock()
		cancel(nil)
		cancelTimed()
	}
}

// sinkStates holds every shard's sinkState and keeps them current from
// one subscription to the sink's notices of all shards.
type sinkStates []*sinkState

func newSinkStates(shards int) sinkStates {
	out := make(sinkStates, shards)
	for k := range out {
		out[k] = &sinkState{}
	}
	return out
}

// of is shard k's state; nil when the batcher does not follow the sink.
func (ss sinkStates) of(k int) *sinkState {
	if k < len(ss) {
		return ss[k]
	}
	return nil
}

// subscribe follows the sink's notices until the returned subscription is
// unsubscribed. A notice of a shard this process does not batch updates
// a state nobody reads.
func (ss sinkStates) subscribe(nc *nats.Conn) (*nats.Subscription, error) {
	return nc.Subscribe(streams.LandedPrefix+"*", func(m *nats.Msg) {
		k, err := strconv.Atoi(strings.TrimPrefix(m.Subject, streams.LandedPrefix))
		if err != nil || k < 0 || k >= len(ss) {
			return
		}
		seq, err := strconv.ParseUint(string(m.Data), 10, 64)
		if err != nil {
			return
		}
		ss[k].landedThrough(seq)
	})
}
