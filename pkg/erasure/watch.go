package erasure

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"maps"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/retry"
)

// Watcher keeps the suppression list as the bucket holds it, for the entry
// points to read without I/O (the shape of tenants.Watcher): a new
// suppression applies as soon as the watch delivers it, in milliseconds.
// While the bucket does not answer, the last list seen stays.
type Watcher struct {
	js       jetstream.JetStream
	replicas int
	log      *zap.Logger
	cur      atomic.Pointer[suppressed]
	// ready is closed after the first complete read of the bucket.
	ready chan struct{}
}

// suppressed is the list: tenant -> user hash (userSum) -> suppression. A
// tenant with no entry costs its events one map lookup.
type suppressed map[string]map[[16]byte]Suppression

// NewWatcher makes a watcher with an empty list until the bucket is read.
func NewWatcher(js jetstream.JetStream, replicas int, log *zap.Logger) *Watcher {
	w := &Watcher{js: js, replicas: replicas, log: log, ready: make(chan struct{})}
	w.cur.Store(&suppressed{})
	return w
}

// Ready is closed once the bucket was read whole once.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Wait blocks until the bucket was read whole once, or ctx ends.
func (w *Watcher) Wait(ctx context.Context) error {
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Suppressed reports whether the event of user in tenant with time ts is
// refused, and the request that refused it.
func (w *Watcher) Suppressed(tenant, user string, ts time.Time) (string, bool) {
	users := (*w.cur.Load())[tenant]
	if len(users) == 0 {
		return "", false
	}
	s, ok := users[userSum(tenant, user)]
	if !ok || !s.Covers(ts) {
		return "", false
	}
	return s.Request, true
}

// Drop removes the suppressed events from events, in place, and returns
// what is left and how many it removed. Events of tenants with no
// suppressed user cost a map lookup each.
func (w *Watcher) Drop(events []event.Event) ([]event.Event, int) {
	list := *w.cur.Load()
	if len(list) == 0 {
		return events, 0
	}
	kept := events[:0]
	for i := range events {
		e := &events[i]
		if users := list[e.Tenant]; len(users) > 0 {
			if s, ok := users[userSum(e.Tenant, e.UserID)]; ok && s.Covers(e.TS) {
				continue
			}
		}
		kept = append(kept, *e)
	}
	return kept, len(events) - len(kept)
}

// Len is the number of suppressed users.
func (w *Watcher) Len() int {
	n := 0
	for _, users := range *w.cur.Load() {
		n += len(users)
	}
	return n
}

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
			b.Reset()
		}
		wait := b.NextBackOff()
		w.log.Warn("erasure: watch ended, watching again", zap.String("bucket", Bucket), zap.Duration("wait", wait), zap.Error(err))
		if !retry.Sleep(ctx, wait) {
			return
		}
	}
}

// watch reads the suppression keys whole, then applies every change until
// the watch or ctx ends.
func (w *Watcher) watch(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, 5*time.Second)
	kv, err := openBucket(octx, w.js, w.replicas)
	cancel()
	if err != nil {
		return err
	}
	kw, err := kv.Watch(ctx, userPrefix+">")
	if err != nil {
		return err
	}
	defer func() { _ = kw.Stop() }()
	next := suppressed{}
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
			next = maps.Clone(next)
		}
		w.apply(next, e, !initial)
		if !initial {
			w.publish(next)
		}
	}
}

// apply applies one entry to s. Once s may be published (copy), the
// tenant's map is copied, never changed in place, since readers may hold
// it; the initial read changes its own maps.
func (w *Watcher) apply(s suppressed, e jetstream.KeyValueEntry, copy bool) {
	tenant, hexHash, ok := userOf(e.Key())
	var hash [16]byte
	if !ok || len(hexHash) != hex.EncodedLen(len(hash)) {
		return
	}
	if _, err := hex.Decode(hash[:], []byte(hexHash)); err != nil {
		return
	}
	users := s[tenant]
	if copy {
		users = maps.Clone(users)
	}
	if users == nil {
		users = map[[16]byte]Suppression{}
	}
	if e.Operation() == jetstream.KeyValuePut {
		var v Suppression
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			w.log.Warn("erasure: ignoring an invalid suppression", zap.String("key", e.Key()))
			return
		}
		users[hash] = v
	} else {
		delete(users, hash)
	}
	s[tenant] = users
}

func (w *Watcher) publish(s suppressed) {
	w.cur.Store(&s)
	select {
	case <-w.ready:
	default:
		close(w.ready)
	}
}
