package shard

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/liveness"
)

// ErrNotOwner stops the work of a shard this instance no longer owns: its
// lease is lost. What it held goes, unsettled, to the next owner.
var ErrNotOwner = errors.New("shard lease lost")

// Owner decides which shards an instance works on, and for how long.
// Run calls work(ctx, k) in a goroutine of its own for each shard k the
// instance is assigned, with a context that ends when k is revoked (handed
// over), lost (its lease ran out) or ctx ends; it returns once ctx has
// ended and every work has returned. Holds reports whether the instance
// still owns k: the fence every output of the shard checks first.
// lease.Owner shares the shards among the live instances; Static gives
// this instance a fixed list.
type Owner interface {
	Run(ctx context.Context, work func(ctx context.Context, shard int) error) error
	Holds(shard int) bool
}

// Static owns a fixed list of shards for the whole run: the operator sees
// to it that each shard has one running owner. A work that fails ends the
// run, with its error.
type Static []int

// Run runs work for every shard of s until ctx ends or one of them fails.
func (s Static) Run(ctx context.Context, work func(ctx context.Context, shard int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, k := range s {
		wg.Go(func() {
			if err := work(ctx, k); err != nil {
				once.Do(func() { first = fmt.Errorf("shard %d: %w", k, err) })
				cancel()
			}
		})
	}
	wg.Wait()
	return first
}

// Holds is true: a static shard is never revoked.
func (Static) Holds(int) bool { return true }

// Loop is one shard's work under a Supervisor: a liveness.Unit that the
// supervisor's poller watches while it runs.
type Loop interface {
	liveness.Unit
	// Run works on the shard until ctx ends (shutdown, or the shard
	// revoked or lost), finishing what it holds as its service says.
	Run(ctx context.Context)
	// Stopped cleans up after Run: the shard's stall, if any, is over and
	// its gauges are zero; its backlog is the next owner's to report.
	Stopped()
}

// Supervisor runs the per-shard loops of a service (batcher, sink): one
// loop for each shard the Owner assigns this instance, whatever the
// ownership, and one liveness.Poller over the loops that run.
type Supervisor struct {
	Owner Owner
	// Start makes shard k's loop for one tenure; holds reports whether
	// the instance still owns k. An error ends the tenure before it
	// starts: a static shard ends the run, a leased one is started again
	// at the owner's next round.
	Start  func(ctx context.Context, k int, holds func() bool) (Loop, error)
	Poller liveness.Poller
	Log    *zap.Logger
}

// Run runs the shards until ctx ends and every loop has returned.
func (s *Supervisor) Run(ctx context.Context) error {
	var running Running[Loop]
	pctx, stopPolling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		s.Poller.Run(pctx, func() []liveness.Unit {
			loops := running.All()
			units := make([]liveness.Unit, len(loops))
			for i, l := range loops {
				units[i] = l
			}
			return units
		})
	})
	defer func() {
		stopPolling()
		wg.Wait()
	}()
	return s.Owner.Run(ctx, func(ctx context.Context, k int) error {
		l, err := s.Start(ctx, k, func() bool { return s.Owner.Holds(k) })
		if err != nil {
			return fmt.Errorf("start shard %d: %w", k, err)
		}
		running.Add(k, l)
		defer func() {
			running.Remove(k, l)
			l.Stopped()
		}()
		log := s.Log.With(zap.Int("shard", k))
		log.Info("shard started")
		l.Run(ctx)
		log.Info("shard stopped")
		return nil
	})
}
