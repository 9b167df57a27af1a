package batcher

import (
	"crypto/sha256"
	"time"

	"github.com/surge-events/surge/pkg/streams"
)

// dedupKey identifies an event for deduplication: the first 128 bits of
// SHA-256(tenant, NUL, event id). A cryptographic hash, so no tenant can
// craft an id that collides with another's; 128 bits, so an accidental
// collision (which would drop a distinct event) stays out of reach at any
// scale: about 1e-20 for a set of a million ids checked a billion times.
type dedupKey [streams.DedupKeySize]byte

// keyOf is the key of tenant's event id; buf is scratch space, returned
// grown for the next call.
func keyOf(buf []byte, tenant, eventID string) (dedupKey, []byte) {
	buf = append(append(append(buf[:0], tenant...), 0), eventID...)
	sum := sha256.Sum256(buf)
	return dedupKey(sum[:streams.DedupKeySize]), buf
}

// seenBuckets is how many time buckets the window is split into: an id
// is remembered for at least the window and at most one bucket (1/24 of
// it, an hour by default) longer.
const seenBuckets = 24

// seenSet holds the keys of a shard's events with client ids: those of
// published batches, remembered for a window, and those of the open
// batch. Not safe for concurrent use: one shard loop owns it.
//
// Each key maps to the generation of the batch that holds it: the open
// batch's generation (open), or one that was published (committed, with
// the time bucket of its PubAck). A generation cut but never committed (a
// batch held at shutdown or when the lease was lost) is neither, so its
// keys count as absent: copies of them pass. Checking an event is one map
// access, and publishing a batch touches no key: memory is one map entry
// per key (see BenchmarkSeenSet) and time one cache miss per event (see
// BenchmarkDedupPerEvent).
//
// Generations are committed in increasing order (batches are published in
// order, one at a time), with non-decreasing buckets, so the oldest
// committed generations are the lowest: expiring a bucket and evicting
// beyond maxIDs drop every key of generation at or below a bound in one
// scan of the map (once a bucket, an hour by default).
type seenSet struct {
	width  time.Duration // one bucket
	maxIDs int
	ids    map[dedupKey]uint32 // key -> generation
	open   uint32              // the open batch's generation
	// committed are the published generations not yet expired, oldest
	// first; buckets their PubAck's bucket.
	committed []committedGen
	buckets   map[uint32]int64
	// floor is the highest generation dropped: keys at or below it are gone
	// or going.
	floor uint32
	cur   int64 // the newest bucket number seen
}

type committedGen struct {
	gen    uint32
	bucket int64
}

func newSeenSet(window time.Duration, maxIDs int) *seenSet {
	return &seenSet{
		width:   max(window/seenBuckets, time.Millisecond),
		maxIDs:  maxIDs,
		ids:     make(map[dedupKey]uint32),
		buckets: make(map[uint32]int64),
		open:    1, // 0 is below every floor
	}
}

func (s *seenSet) bucket(t time.Time) int64 { return t.UnixNano() / int64(s.width) }

// held reports whether generation g is the open batch's or published
// within the window.
func (s *seenSet) held(g uint32) bool {
	if g == s.open {
		return true
	}
	_, ok := s.buckets[g]
	return ok
}

// check reports whether k is held (a copy: drop it); when it is not, k
// joins the open batch.
func (s *seenSet) check(k dedupKey) bool {
	g, ok := s.ids[k]
	if ok && s.held(g) {
		return true
	}
	s.ids[k] = s.open
	return false
}

// put adds k to the open batch whatever holds it: a rebuild's newer
// record moves a key to its later time.
func (s *seenSet) put(k dedupKey) { s.ids[k] = s.open }

// has reports whether k is held, without adding it.
func (s *seenSet) has(k dedupKey) bool {
	g, ok := s.ids[k]
	return ok && s.held(g)
}

// cut closes the open batch's generation and returns it; the keys of the
// next batch join a new one.
func (s *seenSet) cut() uint32 {
	g := s.open
	s.open++
	return g
}

// commit marks generation g published at t (its PubAck, or its record's
// time when rebuilding); a t already out of the window only expires it.
func (s *seenSet) commit(g uint32, t time.Time) {
	b := s.bucket(t)
	if n := len(s.committed); n > 0 {
		b = max(b, s.committed[n-1].bucket) // keep buckets in order
	}
	s.committed = append(s.committed, committedGen{gen: g, bucket: b})
	s.buckets[g] = b
	s.advance(t)
	for len(s.ids) > s.maxIDs && len(s.committed) > 0 {
		s.drop(s.committed[0].bucket) // only lets duplicates through
	}
}

// advance moves the current bucket to now's, expiring what leaves the
// window.
func (s *seenSet) advance(now time.Time) {
	if b := s.bucket(now); b > s.cur {
		s.cur = b
	}
	if len(s.committed) > 0 && s.committed[0].bucket < s.cur-seenBuckets {
		s.drop(s.cur - seenBuckets - 1)
	}
}

// drop forgets every committed generation of bucket upto or older, and
// the keys of every generation at or below the newest of them.
func (s *seenSet) drop(upto int64) {
	i := 0
	for i < len(s.committed) && s.committed[i].bucket <= upto {
		delete(s.buckets, s.committed[i].gen)
		s.floor = s.committed[i].gen
		i++
	}
	s.committed = append(s.committed[:0], s.committed[i:]...)
	for k, g := range s.ids {
		if g <= s.floor {
			delete(s.ids, k)
		}
	}
}

// len is the number of keys in the map.
func (s *seenSet) len() int { return len(s.ids) }
