package tenants

import (
	"context"
	"encoding/json"
	"maps"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/retry"
)

// Watcher keeps every tenant's limits as the bucket holds them, for the
// request path to read without I/O: a change in the bucket applies as
// soon as the watch delivers it (milliseconds). Until the first read the
// configured defaults apply; while the bucket does not answer the last
// limits seen stay.
type Watcher struct {
	js       jetstream.JetStream
	replicas int
	log      *zap.Logger
	// base is the default limits of the configuration, which the
	// bucket's DefaultKey replaces.
	base Limits
	cur  atomic.Pointer[snapshot]
	// ready is closed after the first complete read of the bucket.
	ready chan struct{}
}

type snapshot struct {
	def     Limits
	tenants map[string]Limits
}

// NewWatcher makes a watcher whose default is base until the bucket says
// otherwise.
func NewWatcher(js jetstream.JetStream, replicas int, base Limits, log *zap.Logger) *Watcher {
	w := &Watcher{js: js, replicas: replicas, base: base, log: log, ready: make(chan struct{})}
	w.cur.Store(&snapshot{def: base, tenants: map[string]Limits{}})
	return w
}

// Limits returns tenant's limits: its own, else the default.
func (w *Watcher) Limits(tenant string) Limits {
	s := w.cur.Load()
	if l, ok := s.tenants[tenant]; ok {
		return l
	}
	return s.def
}

// Ready is closed once the bucket was read whole once.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Run watches the bucket until ctx ends, watching again after a failure
// or after NATS ended the watch.
func (w *Watcher) Run(ctx context.Context) {
	b := retry.DefaultConfig(5 * time.Second).NewBackOff()
	for ctx.Err() == nil {
		started := time.Now()
		err := w.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > time.Minute {
			b.Reset() // it ran a while: the next failure starts short
		}
		wait := b.NextBackOff()
		w.log.Warn("tenant limits: watch ended, watching again", zap.String("bucket", Bucket), zap.Duration("wait", wait), zap.Error(err))
		if !retry.Sleep(ctx, wait) {
			return
		}
	}
}

// watch reads the bucket whole, then applies every change until the
// watch or ctx ends.
func (w *Watcher) watch(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	kv, err := openBucket(octx, w.js, w.replicas)
	cancel()
	if err != nil {
		return err
	}
	kw, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = kw.Stop() }()
	next := &snapshot{def: w.base, tenants: map[string]Limits{}}
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
		if e == nil { // the bucket was read whole
			initial = false
			w.publish(next)
			continue
		}
		if !initial {
			next = &snapshot{def: next.def, tenants: maps.Clone(next.tenants)}
		}
		w.apply(next, e)
		if !initial {
			w.publish(next)
		}
	}
}

func (w *Watcher) apply(s *snapshot, e jetstream.KeyValueEntry) {
	t, ok := tenantOf(e.Key())
	if !ok {
		return
	}
	var l Limits
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &l); err != nil || l.Validate() != nil {
			w.log.Warn("tenant limits: ignoring an invalid entry", zap.String("key", e.Key()), zap.ByteString("value", e.Value()))
			return
		}
	}
	switch {
	case t == "" && e.Operation() == jetstream.KeyValuePut:
		s.def = l
	case t == "":
		s.def = w.base
	case e.Operation() == jetstream.KeyValuePut:
		s.tenants[t] = l
	default:
		delete(s.tenants, t)
	}
}

func (w *Watcher) publish(s *snapshot) {
	w.cur.Store(s)
	select {
	case <-w.ready:
	default:
		close(w.ready)
	}
}
