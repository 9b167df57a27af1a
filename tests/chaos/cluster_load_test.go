package chaos

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
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

	tally
}

func newClusterLoad(ingestURLs []string, seed uint64) *clusterLoad {
	urls := make([]string, len(ingestURLs))
	for i, u := range ingestURLs {
		urls[i] = u + "/v1/events"
	}
	l := &clusterLoad{urls: urls, seed: seed, httpc: &http.Client{Timeout: 10 * time.Second}}
	l.init(0)
	return l
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
	body, ids := eventsBody("cc", "chaos", r, perRequest, rng)
	l.sent.Add(perRequest)
	key := "cluster-chaos-" + strconv.Itoa(r)
	l.untilAccepted(ctx, r, ids,
		func(attempt int) string {
			return postEvents(ctx, l.httpc, l.urls[(r+attempt-1)%len(l.urls)], body, key)
		},
		func(attempt int) time.Duration { return min(time.Duration(attempt)*100*time.Millisecond, time.Second) })
}
