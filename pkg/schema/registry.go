package schema

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/retry"
)

// Bucket is the key-value bucket of the agreed schemas, one key per table
// (table.<name>), changed only by compare-and-swap.
const Bucket = "SURGE_SCHEMA"

// Key is the bucket key of table's schema.
func Key(table string) string { return "table." + table }

// maxCAS bounds the compare-and-swap attempts of one Update: each failed
// attempt means another instance changed the schema meanwhile, so the
// next one starts from its document.
const maxCAS = 5

// ErrContended says Update lost every compare-and-swap to other writers.
var ErrContended = errors.New("schema changed by others on every attempt")

// Snapshot is one revision of a table's schema. Rev 0 with an empty Doc
// means none was written yet.
type Snapshot struct {
	Doc *Doc
	Rev uint64
	// Wrote is set on the snapshot Update returns when this call wrote
	// it (rather than found the change made by another writer).
	Wrote bool
}

// Registry reads, watches and changes one table's schema in the bucket.
// Safe for concurrent use.
type Registry struct {
	kv  jetstream.KeyValue
	key string

	mu  sync.Mutex
	cur Snapshot
}

// OpenRegistry opens the bucket, creating it when missing with replicas
// (0 is 1), and reads table's schema. Each request is bounded by timeout.
func OpenRegistry(ctx context.Context, js jetstream.JetStream, table string, replicas int, timeout time.Duration) (*Registry, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	kv, err := js.KeyValue(rctx, Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(rctx, jetstream.KeyValueConfig{
			Bucket:      Bucket,
			Description: "Surge's agreed typed columns, one key per table",
			History:     5,
			Storage:     jetstream.FileStorage,
			Replicas:    max(replicas, 1),
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile
			kv, err = js.KeyValue(rctx, Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("schema bucket %s: %w", Bucket, err)
	}
	r := &Registry{kv: kv, key: Key(table), cur: Snapshot{Doc: &Doc{Format: Format}}}
	if _, err := r.Read(rctx); err != nil {
		return nil, err
	}
	return r, nil
}

// Current is the newest schema this registry has seen (read, watched or
// written). Its Doc must not be changed.
func (r *Registry) Current() Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// see keeps s when it is newer than the current one.
func (r *Registry) see(s Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.Rev >= r.cur.Rev {
		s.Wrote = false
		r.cur = s
	}
}

// Read fetches the schema from the bucket.
func (r *Registry) Read(ctx context.Context) (Snapshot, error) {
	e, err := r.kv.Get(ctx, r.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return r.Current(), nil
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("read schema %s: %w", r.key, err)
	}
	s, err := decode(e)
	if err != nil {
		return Snapshot{}, err
	}
	r.see(s)
	return s, nil
}

func decode(e jetstream.KeyValueEntry) (Snapshot, error) {
	d := &Doc{}
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), d); err != nil {
			return Snapshot{}, fmt.Errorf("schema %s revision %d: %w", e.Key(), e.Revision(), err)
		}
	}
	if d.Format == 0 {
		d.Format = Format
	}
	return Snapshot{Doc: d, Rev: e.Revision()}, nil
}

// Watch keeps Current up to date until ctx ends, and returns nil then.
// The library's watcher resumes by itself after a reconnect.
func (r *Registry) Watch(ctx context.Context) error {
	w, err := r.kv.Watch(ctx, r.key, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch schema %s: %w", r.key, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("watch schema %s: watcher stopped", r.key)
			}
			if e == nil { // the initial values are all delivered
				continue
			}
			if s, err := decode(e); err == nil {
				r.see(s)
			}
		}
	}
}

// Update changes the schema by compare-and-swap: change gets the newest
// document (never to be modified: return a new one) and says whether it
// changes it. On a conflict the newest document is read and change is
// asked again, up to maxCAS times. It returns the snapshot in force after:
// the one written, or the one change left alone.
func (r *Registry) Update(ctx context.Context, change func(*Doc) (*Doc, bool)) (Snapshot, error) {
	cur := r.Current()
	for range maxCAS {
		next, changed := change(cur.Doc)
		if !changed {
			return cur, nil
		}
		if next.Format == 0 {
			next.Format = Format
		}
		data, err := json.Marshal(next)
		if err != nil {
			return Snapshot{}, fmt.Errorf("encode schema %s: %w", r.key, err)
		}
		var rev uint64
		if cur.Rev == 0 {
			rev, err = r.kv.Create(ctx, r.key, data)
		} else {
			rev, err = r.kv.Update(ctx, r.key, data, cur.Rev)
		}
		if err == nil {
			s := Snapshot{Doc: next, Rev: rev, Wrote: true}
			r.see(s)
			return s, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return Snapshot{}, fmt.Errorf("write schema %s: %w", r.key, err)
		}
		if cur, err = r.Read(ctx); err != nil {
			return Snapshot{}, err
		}
	}
	return r.Current(), ErrContended
}

// isWrongSequence reports the server's refusal of an Update at a stale
// revision (R>1 streams answer with the second code).
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// Index maps each column's path to its name, for lookups by path.
func (d *Doc) Index() map[string]string {
	out := make(map[string]string, len(d.Columns))
	for name, c := range d.Columns {
		out[c.Path] = name
	}
	return out
}

// Clone is a deep copy of d, to change.
func (d *Doc) Clone() *Doc {
	out := &Doc{Format: d.Format, Rate: d.Rate, Columns: make(map[string]*Col, len(d.Columns))}
	if d.Format == 0 {
		out.Format = Format
	}
	for n, c := range d.Columns {
		cc := *c
		out.Columns[n] = &cc
	}
	if len(d.Failed) > 0 {
		out.Failed = make(map[string]string, len(d.Failed))
		for n, e := range d.Failed {
			out.Failed[n] = e
		}
	}
	return out
}

// OpenRegistryRetrying is OpenRegistry tried again, paced by rc, until it
// answers or ctx ends; onRetry hears of each failed attempt.
func OpenRegistryRetrying(ctx context.Context, js jetstream.JetStream, table string, replicas int, timeout time.Duration,
	rc retry.Config, onRetry func(attempt int, err error, wait time.Duration)) (*Registry, error) {
	var reg *Registry
	err := retry.Do(ctx, rc, func() error {
		var err error
		reg, err = OpenRegistry(ctx, js, table, replicas, timeout)
		return err
	}, onRetry)
	if err != nil {
		return nil, err
	}
	return reg, nil
}

// Follow keeps Current up to date until ctx ends, watching again, paced by
// rc, after the watch fails; onStop hears of each failure.
func (r *Registry) Follow(ctx context.Context, rc retry.Config, onStop func(err error, wait time.Duration)) {
	b := rc.NewBackOff()
	for {
		err := r.Watch(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := b.NextBackOff()
		onStop(err, wait)
		if !retry.Sleep(ctx, wait) {
			return
		}
	}
}
