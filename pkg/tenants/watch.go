package tenants

import (
	"context"
	"encoding/json"
	"maps"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/kvstate"
)

// Watcher keeps every tenant's limits as the bucket holds them, for the
// request path to read without I/O (kvstate): a change in the bucket
// applies as soon as the watch delivers it (milliseconds). Until the
// first read the configured defaults apply; while the bucket does not
// answer the last limits seen stay.
type Watcher struct {
	// base is the default limits of the configuration, which the
	// bucket's DefaultKey replaces.
	base  Limits
	log   *zap.Logger
	state *kvstate.State[*snapshot]
}

type snapshot struct {
	def     Limits
	tenants map[string]Limits
}

// NewWatcher makes a watcher whose default is base until the bucket says
// otherwise.
func NewWatcher(js jetstream.JetStream, replicas int, base Limits, log *zap.Logger) *Watcher {
	w := &Watcher{base: base, log: log}
	w.state = kvstate.New(kvstate.Config[*snapshot]{
		Name:  "tenant limits",
		Open:  func(ctx context.Context) (jetstream.KeyValue, error) { return openBucket(ctx, js, replicas) },
		Empty: func() *snapshot { return &snapshot{def: base, tenants: map[string]Limits{}} },
		Apply: w.apply,
		Log:   log,
	})
	return w
}

// Limits returns tenant's limits: its own, else the default.
func (w *Watcher) Limits(tenant string) Limits {
	s := w.state.Load()
	if l, ok := s.tenants[tenant]; ok {
		return l
	}
	return s.def
}

// Ready is closed once the bucket was read whole once.
func (w *Watcher) Ready() <-chan struct{} { return w.state.Ready() }

// Run watches the bucket until ctx ends.
func (w *Watcher) Run(ctx context.Context) { w.state.Run(ctx) }

// apply returns s with entry e applied, on a copy once s is shared.
func (w *Watcher) apply(s *snapshot, e jetstream.KeyValueEntry, shared bool) *snapshot {
	t, ok := tenantOf(e.Key())
	if !ok {
		return s
	}
	var l Limits
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &l); err != nil || l.Validate() != nil {
			w.log.Warn("tenant limits: ignoring an invalid entry", zap.String("key", e.Key()), zap.ByteString("value", e.Value()))
			return s
		}
	}
	if shared {
		s = &snapshot{def: s.def, tenants: maps.Clone(s.tenants)}
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
	return s
}
