// Package kvstate keeps a value built from the keys of a JetStream
// key-value bucket in memory, for request paths to read without I/O: it
// reads the keys whole, then applies each change as the watch delivers
// it (milliseconds), and watches again after a failure. Surge's tenant
// limits and suppression list are such values.
package kvstate

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/retry"
)

// Config says which keys make the value, and how.
type Config[S any] struct {
	// Name names the value in logs.
	Name string
	// Open opens (or creates) the bucket; it is called at each watch.
	Open func(context.Context) (jetstream.KeyValue, error)
	// Filter is the keys watched; "" is every key.
	Filter string
	// Empty is the value before any key is read.
	Empty func() S
	// Apply returns s with entry e applied (a put or a delete). When
	// shared is set, s was published and readers may hold it: Apply
	// changes a copy. During the first read it may change s in place.
	Apply func(s S, e jetstream.KeyValueEntry, shared bool) S
	Log   *zap.Logger
}

// State is the value as the bucket holds it. Until the first read Load
// returns Empty(); while the bucket does not answer, the last value
// read stays.
type State[S any] struct {
	cfg   Config[S]
	cur   atomic.Pointer[S]
	ready chan struct{}
}

// New makes a state holding cfg.Empty(); Run reads the bucket.
func New[S any](cfg Config[S]) *State[S] {
	s := &State[S]{cfg: cfg, ready: make(chan struct{})}
	v := cfg.Empty()
	s.cur.Store(&v)
	return s
}

// Load is the current value.
func (s *State[S]) Load() S { return *s.cur.Load() }

// Ready is closed once the bucket was read whole once.
func (s *State[S]) Ready() <-chan struct{} { return s.ready }

// Run watches the bucket until ctx ends, watching again after a failure
// or after NATS ended the watch.
func (s *State[S]) Run(ctx context.Context) {
	b := retry.DefaultConfig(5 * time.Second).NewBackOff()
	for ctx.Err() == nil {
		started := time.Now()
		err := s.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			b.Reset() // it ran a while: the next failure starts short
		}
		wait := b.NextBackOff()
		s.cfg.Log.Warn(s.cfg.Name+": watch ended, watching again", zap.Duration("wait", wait), zap.Error(err))
		if !retry.Sleep(ctx, wait) {
			return
		}
	}
}

// watch reads the keys whole, then applies every change until the watch
// or ctx ends.
func (s *State[S]) watch(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	kv, err := s.cfg.Open(octx)
	cancel()
	if err != nil {
		return err
	}
	filter := s.cfg.Filter
	if filter == "" {
		filter = ">"
	}
	kw, err := kv.Watch(ctx, filter)
	if err != nil {
		return err
	}
	defer func() { _ = kw.Stop() }()
	next := s.cfg.Empty()
	initial := true
	for {
		var e jetstream.KeyValueEntry
		var open bool
		select {
		case e, open = <-kw.Updates():
		case <-ctx.Done():
			return nil
		}
		if !open {
			return nil
		}
		if e == nil { // the keys were read whole
			initial = false
			s.publish(next)
			continue
		}
		next = s.cfg.Apply(next, e, !initial)
		if !initial {
			s.publish(next)
		}
	}
}

func (s *State[S]) publish(v S) {
	s.cur.Store(&v)
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
}
