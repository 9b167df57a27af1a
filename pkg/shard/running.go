package shard

import (
	"maps"
	"slices"
	"sync"
)

// Running is the set of shard loops an instance runs now, for the pollers
// that watch them while shards come and go (lease ownership). Safe for
// concurrent use.
type Running[T comparable] struct {
	mu sync.Mutex
	m  map[int]T
}

// Add records v as the loop of shard k.
func (r *Running[T]) Add(k int, v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[int]T)
	}
	r.m[k] = v
}

// Remove forgets v as the loop of shard k; a newer loop of k stays.
func (r *Running[T]) Remove(k int, v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[k] == v {
		delete(r.m, k)
	}
}

// All is the running loops, by shard.
func (r *Running[T]) All() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]T, 0, len(r.m))
	for _, k := range slices.Sorted(maps.Keys(r.m)) {
		out = append(out, r.m[k])
	}
	return out
}
