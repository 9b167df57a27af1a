package chaos

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/lease"
)

// leaseWatch follows the shard keys of the lease bucket: who holds each
// and since when (the server's time of the write that gave it).
type leaseWatch struct {
	ttl    time.Duration
	w      jetstream.KeyWatcher
	done   chan struct{}
	mu     sync.Mutex
	owners map[string]leaseOwner
	// history lists every owner each key had, in order.
	history map[string][]leaseOwner
}

type leaseOwner struct {
	id    string // "" once deleted
	since time.Time
}

func watchLeases(ctx context.Context, js jetstream.JetStream) (*leaseWatch, error) {
	kv, err := js.KeyValue(ctx, lease.Bucket)
	if err != nil {
		return nil, fmt.Errorf("lease bucket: %w", err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease bucket: %w", err)
	}
	w, err := kv.Watch(ctx, "*.shard.*")
	if err != nil {
		return nil, fmt.Errorf("watch leases: %w", err)
	}
	lw := &leaseWatch{ttl: st.TTL(), w: w, done: make(chan struct{}),
		owners: map[string]leaseOwner{}, history: map[string][]leaseOwner{}}
	go func() {
		defer close(lw.done)
		for e := range w.Updates() {
			if e == nil {
				continue // the initial values are in
			}
			id := string(e.Value())
			if e.Operation() != jetstream.KeyValuePut {
				id = ""
			}
			lw.mu.Lock()
			if cur, ok := lw.owners[e.Key()]; !ok || cur.id != id {
				o := leaseOwner{id: id, since: e.Created()}
				lw.owners[e.Key()] = o
				lw.history[e.Key()] = append(lw.history[e.Key()], o)
			}
			lw.mu.Unlock()
		}
	}()
	return lw, nil
}

func (lw *leaseWatch) stop() {
	_ = lw.w.Stop()
	<-lw.done
}

// ownedBy lists the shards of service whose key names id, ascending.
func (lw *leaseWatch) ownedBy(service, id string) []int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	var out []int
	for k := range shards {
		if o := lw.owners[service+".shard."+strconv.Itoa(k)]; id != "" && o.id == id {
			out = append(out, k)
		}
	}
	return out
}

// held counts the shards of service whose key names an owner.
func (lw *leaseWatch) held(service string) int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	n := 0
	for k := range shards {
		if lw.owners[service+".shard."+strconv.Itoa(k)].id != "" {
			n++
		}
	}
	return n
}

// changesSince counts the owner changes of every key after t.
func (lw *leaseWatch) changesSince(t time.Time) int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	n := 0
	for _, h := range lw.history {
		for _, o := range h {
			if o.since.After(t) {
				n++
			}
		}
	}
	return n
}

// movedFrom is the first owner of shard k of service after id's last
// hold of it, and when it took the key; zero while nobody did.
func (lw *leaseWatch) movedFrom(service string, k int, id string) (string, time.Time) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	h := lw.history[service+".shard."+strconv.Itoa(k)]
	last := -1
	for i, o := range h {
		if o.id == id {
			last = i
		}
	}
	if last < 0 {
		return "", time.Time{}
	}
	for _, o := range h[last+1:] {
		if o.id != "" {
			return o.id, o.since
		}
	}
	return "", time.Time{}
}
