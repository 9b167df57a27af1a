package chaos

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// tally is what a load's clients were answered: the events accepted, the
// answers by status (and when those other than 202 came), and the
// requests that failed for good. Each load embeds one; init it first.
type tally struct {
	mu       sync.Mutex
	accepted map[string]struct{}
	failed   []string
	status   map[string]int
	// errAt are the times of the answers other than 202, in order per
	// client (at most maxErrTimes).
	errAt            []time.Time
	acceptedRequests atomic.Int64
	retries          atomic.Int64
}

// newKeyEvery is how many requests of a load share a new property key.
const newKeyEvery = 25

// maxErrTimes bounds the error times a tally keeps.
const maxErrTimes = 1 << 16

func (t *tally) init(events int) {
	t.accepted = make(map[string]struct{}, events)
	t.status = map[string]int{}
}

// eventsBody is request r of a load: n events with ids <prefix>-<r>-<i>
// and type typ, as a JSON array, and those ids. Every newKeyEvery requests
// bring a property key never seen before, so the schema keeps changing
// (a new typed column, its ALTER on every server) under the faults.
func eventsBody(prefix, typ string, r, n int, rng *rand.Rand) (string, []string) {
	ids := make([]string, n)
	var b strings.Builder
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		ids[i] = fmt.Sprintf("%s-%d-%d", prefix, r, i)
		fmt.Fprintf(&b, `{"event_id":%q,"user_id":"u%d","type":%q,"properties":{"r":%d,"i":%d,"g%d":%d}}`,
			ids[i], rng.IntN(10_000), typ, r, i, r/newKeyEvery, r)
	}
	b.WriteByte(']')
	return b.String(), ids
}

// untilAccepted sends request r, which carries ids, with post (given the
// attempt, from 1) until it is answered 202 and its ids are accepted. A
// 4xx other than 429, no 202 within retryFor, or ctx's end is a failure.
// Between attempts it waits wait(attempt).
func (t *tally) untilAccepted(ctx context.Context, r int, ids []string, post func(attempt int) string, wait func(attempt int) time.Duration) {
	deadline := time.Now().Add(retryFor)
	for attempt := 1; ; attempt++ {
		status := post(attempt)
		t.count(status)
		switch {
		case status == "202":
			t.mu.Lock()
			for _, id := range ids {
				t.accepted[id] = struct{}{}
			}
			t.mu.Unlock()
			t.acceptedRequests.Add(1)
			return
		case strings.HasPrefix(status, "4") && status != "429":
			t.fail(fmt.Sprintf("request %d: unexpected %s", r, status))
			return
		}
		if time.Now().After(deadline) {
			t.fail(fmt.Sprintf("request %d: no 202 after %d attempts, last %s", r, attempt, status))
			return
		}
		t.retries.Add(1)
		if sleep(ctx, wait(attempt)) != nil {
			t.fail(fmt.Sprintf("request %d: aborted after %d attempts, last %s", r, attempt, status))
			return
		}
	}
}

func (t *tally) count(status string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status[status]++
	if status != "202" && len(t.errAt) < maxErrTimes {
		t.errAt = append(t.errAt, time.Now())
	}
}

func (t *tally) fail(msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = append(t.failed, msg)
}

func (t *tally) failures() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.failed)
}

func (t *tally) statuses() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.status)
}

func (t *tally) acceptedIDs() map[string]struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.accepted)
}

// errorsBetween counts the answers other than 202 in [from, to) and
// returns the last one's time.
func (t *tally) errorsBetween(from, to time.Time) (int, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int
	var last time.Time
	for _, at := range t.errAt {
		if !at.Before(from) && at.Before(to) {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	return n, last
}
