package chaos

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// clusterLoad sends events to the ingest instances of a cluster at
// clusterRate from crashClients clients until told to stop. Each request
// is sent until it gets a 202, every attempt with the same
// Idempotency-Key, alternating between the instances: a retry through the
// other instance is recognised too, as both publish into one INGEST.
type clusterLoad struct {
	urls  []string
	seed  uint64
	httpc *http.Client
	next  atomic.Int64 // the next request's number
	sent  atomic.Int64 // events in requests begun

	mu       sync.Mutex
	accepted map[string]struct{}
	failed   []string
	status   map[string]int
	// errAt are the times of the answers other than 202, in order per
	// client (a bounded number: maxErrTimes).
	errAt            []time.Time
	acceptedRequests atomic.Int64
	retries          atomic.Int64
}

// maxErrTimes bounds the error times kept for the report.
const maxErrTimes = 1 << 16

func newClusterLoad(ingestURLs []string, seed uint64) *clusterLoad {
	urls := make([]string, len(ingestURLs))
	for i, u := range ingestURLs {
		urls[i] = u + "/v1/events"
	}
	return &clusterLoad{
		urls: urls, seed: seed,
		httpc:    &http.Client{Timeout: 10 * time.Second},
		accepted: map[string]struct{}{},
		status:   map[string]int{},
	}
}

// run sends until issue ends; a request under way is still sent until its
// 202, unless abort ends too. It returns when every client is done.
func (l *clusterLoad) run(issue, abort context.Context) {
	pace := time.Duration(crashClients*perRequest) * time.Second / clusterRate
	var wg sync.WaitGroup
	for c := range crashClients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(l.seed, uint64(c)))
			tick := time.NewTicker(pace)
			defer tick.Stop()
			for {
				select {
				case <-issue.Done():
					return
				case <-tick.C:
				}
				l.send(abort, int(l.next.Add(1)-1), rng)
			}
		})
	}
	wg.Wait()
}

func (l *clusterLoad) send(ctx context.Context, r int, rng *rand.Rand) {
	ids := make([]string, perRequest)
	var b strings.Builder
	b.WriteByte('[')
	for i := range perRequest {
		if i > 0 {
			b.WriteByte(',')
		}
		ids[i] = fmt.Sprintf("cc-%d-%d", r, i)
		fmt.Fprintf(&b, `{"event_id":%q,"user_id":"u%d","type":"chaos","properties":{"r":%d,"i":%d}}`, ids[i], rng.IntN(10_000), r, i)
	}
	b.WriteByte(']')
	l.sent.Add(perRequest)
	body := b.String()
	key := "cluster-chaos-" + strconv.Itoa(r)
	deadline := time.Now().Add(retryFor)
	for attempt := 0; ; attempt++ {
		status := l.post(ctx, l.urls[(r+attempt)%len(l.urls)], body, key)
		l.mu.Lock()
		l.status[status]++
		if status != "202" && len(l.errAt) < maxErrTimes {
			l.errAt = append(l.errAt, time.Now())
		}
		l.mu.Unlock()
		switch {
		case status == "202":
			l.mu.Lock()
			for _, id := range ids {
				l.accepted[id] = struct{}{}
			}
			l.mu.Unlock()
			l.acceptedRequests.Add(1)
			return
		case strings.HasPrefix(status, "4") && status != "429":
			l.fail(fmt.Sprintf("request %d: unexpected %s", r, status))
			return
		}
		if time.Now().After(deadline) {
			l.fail(fmt.Sprintf("request %d: no 202 after %d attempts, last %s", r, attempt+1, status))
			return
		}
		l.retries.Add(1)
		if sleep(ctx, min(time.Duration(attempt+1)*100*time.Millisecond, time.Second)) != nil {
			return // aborted: the test has failed already
		}
	}
}

func (l *clusterLoad) post(ctx context.Context, url, body, key string) string {
	return postEvents(ctx, l.httpc, url, body, key)
}

func (l *clusterLoad) fail(msg string) {
	l.mu.Lock()
	l.failed = append(l.failed, msg)
	l.mu.Unlock()
}

func (l *clusterLoad) failures() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.failed)
}

func (l *clusterLoad) statuses() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.status)
}

func (l *clusterLoad) acceptedIDs() map[string]struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.accepted)
}

// errorsBetween counts the answers other than 202 in [from, to) and
// returns the last one's time.
func (l *clusterLoad) errorsBetween(from, to time.Time) (int, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int
	var last time.Time
	for _, at := range l.errAt {
		if !at.Before(from) && at.Before(to) {
			n++
			if at.After(last) {
				last = at
			}
		}
	}
	return n, last
}
