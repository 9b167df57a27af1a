package erasure

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"maps"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/kvstate"
)

// Watcher keeps the suppression list as the bucket holds it, for the entry
// points to read without I/O (kvstate): a new suppression applies as soon
// as the watch delivers it, in milliseconds. While the bucket does not
// answer, the last list seen stays.
type Watcher struct {
	log   *zap.Logger
	state *kvstate.State[suppressed]
}

// suppressed is the list: tenant -> user hash (userSum) -> suppression. A
// tenant with no entry costs its events one map lookup.
type suppressed map[string]map[[16]byte]Suppression

// NewWatcher makes a watcher with an empty list until the bucket is read.
func NewWatcher(js jetstream.JetStream, replicas int, log *zap.Logger) *Watcher {
	w := &Watcher{log: log}
	w.state = kvstate.New(kvstate.Config[suppressed]{
		Name:   "erasure",
		Open:   func(ctx context.Context) (jetstream.KeyValue, error) { return openBucket(ctx, js, replicas) },
		Filter: userPrefix + ">",
		Empty:  func() suppressed { return suppressed{} },
		Apply:  w.apply,
		Log:    log,
	})
	return w
}

// Ready is closed once the bucket was read whole once.
func (w *Watcher) Ready() <-chan struct{} { return w.state.Ready() }

// Wait blocks until the bucket was read whole once, or ctx ends.
func (w *Watcher) Wait(ctx context.Context) error {
	select {
	case <-w.state.Ready():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Suppressed reports whether the event of user in tenant with time ts is
// refused, and the request that refused it.
func (w *Watcher) Suppressed(tenant, user string, ts time.Time) (string, bool) {
	users := w.state.Load()[tenant]
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
	list := w.state.Load()
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
	for _, users := range w.state.Load() {
		n += len(users)
	}
	return n
}

// Run watches the bucket until ctx ends.
func (w *Watcher) Run(ctx context.Context) { w.state.Run(ctx) }

// apply returns s with entry e applied. Once s is shared (published),
// the list and the tenant's map are copied, never changed in place, since
// readers may hold them; the initial read changes its own maps.
func (w *Watcher) apply(s suppressed, e jetstream.KeyValueEntry, shared bool) suppressed {
	tenant, hexHash, ok := userOf(e.Key())
	var hash [16]byte
	if !ok || len(hexHash) != hex.EncodedLen(len(hash)) {
		return s
	}
	if _, err := hex.Decode(hash[:], []byte(hexHash)); err != nil {
		return s
	}
	var v Suppression
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			w.log.Warn("erasure: ignoring an invalid suppression", zap.String("key", e.Key()))
			return s
		}
	}
	users := s[tenant]
	if shared {
		s, users = maps.Clone(s), maps.Clone(users)
	}
	if users == nil {
		users = map[[16]byte]Suppression{}
	}
	if e.Operation() == jetstream.KeyValuePut {
		users[hash] = v
	} else {
		delete(users, hash)
	}
	s[tenant] = users
	return s
}
