package partitioner

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/streams"
)

// Back-pressure: the partitioner is faster than the sinks, so without a
// bound it would move every tenant's backlog out of INGEST into EVENTS
// and BATCHES at once, and another tenant's events would queue behind it
// in each shard's batcher and sink, where no turns apply. The gate reads
// how many batches BATCHES holds (every batch the sinks have not acked
// yet) every gatePoll and holds back while there are more than
// max_batches_backlog: the workers fetch nothing of the tenants with a
// backlog (the scheduler's hold), so that work waits in INGEST, while
// the tenants with at most a turn of messages waiting go on at once. A
// message already fetched is handled to the end. A hold is no stall: the
// input's watchdog is kept idle while it lasts, and says what it waits
// on.

// gatePoll is how often the gate reads BATCHES. A read is one small
// stream info request (10 a second is nothing to the server), and the
// period bounds how late a hold starts and ends: the workers fetch at
// most one turn each past the bound, and resume within gatePoll of the
// sinks catching up, which is short beside a sink's insert.
const gatePoll = 100 * time.Millisecond

// gateTimeout bounds one read of BATCHES. A read that fails or times out
// opens the gate: a monitoring failure never holds the pipeline.
const gateTimeout = time.Second

// gateLogEvery is the most often a hold, or a failed read, is logged:
// while the sinks are at their limit the gate may close and open several
// times a second.
const gateLogEvery = 10 * time.Second

// gate says when the sinks are behind, for the scheduler to hold back
// the tenants with a backlog. held and open are read by the workers
// (open guarded by mu); the rest is the polling goroutine's.
type gate struct {
	bound  int // the most batches before a hold; 0: never held
	s      *Service
	logger *zap.Logger
	now    func() time.Time

	held atomic.Bool
	// opened is when the gate last opened (unix ns); 0 while it never
	// closed.
	opened atomic.Int64
	mu     sync.Mutex
	open   chan struct{} // closed when the gate opens; a new one per hold

	since     time.Time // when the hold began
	last      time.Time // the hold's time counted so far, up to here
	logged    time.Time // the last hold logged
	unlogged  int       // holds since the last one logged
	failures  int       // reads failed since the last one logged
	warned    time.Time // the last failed read logged
	holdShown bool      // this hold was logged
}

func newGate(s *Service, bound int) *gate {
	open := make(chan struct{})
	close(open)
	return &gate{bound: bound, s: s, logger: s.logger, now: time.Now, open: open}
}

// batchesReader reads how many batches BATCHES holds.
type batchesReader func(ctx context.Context) (uint64, error)

// batchesIn reads BATCHES' message count from js: one stream info
// request. BATCHES is a work queue, so every message in it is a batch no
// sink has acked.
func batchesIn(js jetstream.JetStream) batchesReader {
	return func(ctx context.Context) (uint64, error) {
		st, err := js.Stream(ctx, streams.Batches)
		if err != nil {
			return 0, fmt.Errorf("stream %s: %w", streams.Batches, err)
		}
		return st.CachedInfo().State.Msgs, nil
	}
}

// on reports whether the gate may hold at all.
func (g *gate) on() bool { return g.bound > 0 }

// run reads BATCHES every gatePoll until ctx ends. The caller polls once
// before it starts the workers, so a partitioner started beside a full
// BATCHES fetches nothing.
func (g *gate) run(ctx context.Context, read batchesReader) {
	t := time.NewTicker(gatePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.poll(ctx, read)
	}
}

// poll reads BATCHES once and closes or opens the gate.
func (g *gate) poll(ctx context.Context, read batchesReader) {
	rctx, cancel := context.WithTimeout(ctx, gateTimeout)
	n, err := read(rctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		g.failures++
		if now := g.now(); now.Sub(g.warned) >= gateLogEvery {
			g.logger.Warn("read BATCHES for back-pressure, not holding back meanwhile", zap.Int("failures", g.failures), zap.Error(err))
			g.warned, g.failures = now, 0
		}
		g.set(false, 0)
		return
	}
	g.set(n > uint64(g.bound), n)
}

// set closes the gate (hold) or opens it, with n the batches BATCHES
// holds, and keeps the metrics and the watchdog current.
func (g *gate) set(hold bool, n uint64) {
	now := g.now()
	s := g.s
	was := g.held.Load()
	switch {
	case hold && !was:
		g.mu.Lock()
		g.open = make(chan struct{})
		g.held.Store(true) // after open is the hold's: a worker may wait on it
		g.mu.Unlock()
		g.since, g.last = now, now
		s.m.heldBack.Set(1)
		g.unlogged++
		g.holdShown = now.Sub(g.logged) >= gateLogEvery
		if g.holdShown {
			g.logger.Info("holding back: waiting on the sinks", zap.Uint64("batches", n), zap.Int("bound", g.bound),
				zap.Int("holds", g.unlogged))
			g.logged, g.unlogged = now, 0
		}
	case hold:
		s.m.heldBackSeconds.Add(now.Sub(g.last).Seconds())
		g.last = now
	case was:
		s.m.heldBackSeconds.Add(now.Sub(g.last).Seconds())
		g.mu.Lock()
		g.held.Store(false)
		close(g.open)
		g.mu.Unlock()
		g.opened.Store(now.UnixNano())
		s.m.heldBack.Set(0)
		// The stall clock starts again now: the hold was no stall.
		s.wd.Idle()
		s.wd.Waiting(s.waitingOn("fetch from " + streams.Ingest))
		if g.holdShown {
			g.logger.Info("resumed: the sinks caught up", zap.Uint64("batches", n), zap.Int("bound", g.bound),
				zap.Duration("held", now.Sub(g.since).Round(time.Millisecond)))
		}
		return
	default:
		return
	}
	// Time held back is no time without progress.
	s.wd.Idle()
	s.wd.Waiting(fmt.Sprintf("the sinks: %s holds %d batches (bound %d)", streams.Batches, n, g.bound))
}

// holding reports whether the gate holds: the scheduler then holds back
// the tenants with a backlog.
func (g *gate) holding() bool { return g.held.Load() }

// released is closed when the gate opens; already closed while it is open.
func (g *gate) released() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// openFor is how long the gate has been open: zero while it holds, and
// the longest duration when it never held. A tenant's messages cannot
// have waited unfetched for longer than that through any fault of its
// consumer.
func (g *gate) openFor() time.Duration {
	if g.held.Load() {
		return 0
	}
	opened := g.opened.Load()
	if opened == 0 {
		return math.MaxInt64
	}
	return g.now().Sub(time.Unix(0, opened))
}
