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

// seenBuckets is how many buckets the window is split into: an id is
// remembered for at least the window and at most one bucket (1/24 of
// it, an hour by default) longer.
const seenBuckets = 24

// seenSet is the set of keys a shard has published, each remembered for
// a window, bounded in size. It is one map from key to the time bucket
// it was added in; expiring a bucket scans the map (once a bucket, an
// hour by default), which keeps memory at one map entry per key (see
// BenchmarkSeenSet). Not safe for concurrent use: one shard loop owns it.
type seenSet struct {
	width  time.Duration // one bucket
	maxIDs int
	ids    map[dedupKey]uint32 // key -> its bucket number, mod 2^32
	counts map[int64]int       // live bucket number -> keys in it
	cur    int64               // the newest bucket number seen
}

func newSeenSet(window time.Duration, maxIDs int) *seenSet {
	return &seenSet{
		width:  max(window/seenBuckets, time.Millisecond),
		maxIDs: maxIDs,
		ids:    make(map[dedupKey]uint32),
		counts: make(map[int64]int),
	}
}

func (s *seenSet) bucket(t time.Time) int64 { return t.UnixNano() / int64(s.width) }

// live reports whether bucket number b (mod 2^32) is within the window
// ending at the current bucket.
func (s *seenSet) live(b uint32) bool { return uint32(s.cur)-b <= seenBuckets }

// advance moves the current bucket to now's, expiring what leaves the
// window.
func (s *seenSet) advance(now time.Time) {
	b := s.bucket(now)
	if b <= s.cur {
		return
	}
	s.cur = b
	expired := false
	for old := range s.counts {
		if old < s.cur-seenBuckets {
			delete(s.counts, old)
			expired = true
		}
	}
	if expired {
		for k, v := range s.ids {
			if !s.live(v) {
				delete(s.ids, k)
			}
		}
	}
}

// has reports whether k was added within the window. Call advance first.
func (s *seenSet) has(k dedupKey) bool {
	v, ok := s.ids[k]
	return ok && s.live(v)
}

// add remembers k as published at t (now, or a record's time when
// rebuilding); a t already out of the window is ignored. Beyond maxIDs the
// oldest bucket is forgotten: that only lets duplicates through.
func (s *seenSet) add(k dedupKey, t time.Time) {
	s.advance(t)
	b := s.bucket(t)
	if b < s.cur-seenBuckets {
		return
	}
	if v, ok := s.ids[k]; ok {
		if s.live(v) {
			ob := s.cur - int64(uint32(s.cur)-v)
			if ob >= b {
				return
			}
			s.counts[ob]--
		}
	}
	s.ids[k] = uint32(b)
	s.counts[b]++
	for len(s.ids) > s.maxIDs {
		s.evictOldest()
	}
}

// evictOldest forgets the oldest live bucket.
func (s *seenSet) evictOldest() {
	oldest, found := int64(0), false
	for b := range s.counts {
		if !found || b < oldest {
			oldest, found = b, true
		}
	}
	if !found {
		clear(s.ids)
		return
	}
	delete(s.counts, oldest)
	for k, v := range s.ids {
		if v == uint32(oldest) {
			delete(s.ids, k)
		}
	}
}

// len is the number of keys held.
func (s *seenSet) len() int { return len(s.ids) }
