package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/tools/stack"
)

// generator makes request bodies of pseudo-random events. Bodies are made
// ahead so the load generator spends little of the machine's CPU; ingest
// gives every event its own ULID, so repeating a body repeats no event.
type generator struct {
	bodies [][]byte
	next   atomic.Uint64
	// accepted counts the events the stack accepted (HTTP 202 or
	// PubAck) from any phase, for the report's time series.
	accepted atomic.Int64
	// idAt are, per body, where its event ids take the request number;
	// nil when the events carry no event_id (dedup.go).
	idAt [][]int
}

// newGenerator makes at least distinct events, in bodies of perRequest,
// which the load sends again and again. Events carry the bench's own three
// properties, or, with a profile, schema.Profile's properties of event i
// (i counting the events of all bodies), drawn from a source of their own
// so the same flags give the same events every run.
func newGenerator(users, perRequest int, profile string, distinct int) *generator {
	types := []string{"page_view", "click", "signup", "purchase", "scroll", "search"}
	r := rand.New(rand.NewPCG(1, 2))
	props := rand.New(rand.NewPCG(3, 4))
	g := &generator{}
	for n := range max(1, (distinct+perRequest-1)/perRequest) {
		var b bytes.Buffer
		b.WriteByte('[')
		for i := range perRequest {
			if i > 0 {
				b.WriteByte(',')
			}
			if profile == "" {
				fmt.Fprintf(&b, `{"user_id":"user-%d","type":%q,"properties":{"path":"/p/%d","ref":"campaign-%d","ms":%d}}`,
					r.IntN(users), types[r.IntN(len(types))], r.IntN(1000), r.IntN(50), r.IntN(5000))
				continue
			}
			fmt.Fprintf(&b, `{"user_id":"user-%d","type":%q,"properties":%s}`,
				r.IntN(users), types[r.IntN(len(types))], schema.Profile(profile, props, n*perRequest+i))
		}
		b.WriteByte(']')
		g.bodies = append(g.bodies, b.Bytes())
	}
	return g
}

// distinctEvents is how many different events the bench makes for f:
// those of 64 requests, and at least two full batches a shard, so that no
// batch holds an event twice. The bodies cycle, and a batch holding some
// of them twice compresses far better than traffic of distinct events,
// in BATCHES and in ClickHouse: with 64 bodies of 500 events, batches of
// 9,600 rows of p20 took 54 bytes an event in BATCHES against 96 at 3,200.
func distinctEvents(f benchFlags) int {
	return max(64*f.perRequest, 2*f.maxRows*f.shards)
}

// size is the bytes of the bodies, which the bench process holds in its
// heap for the whole run.
func (g *generator) size() int {
	n := 0
	for _, b := range g.bodies {
		n += len(b)
	}
	return n
}

func (g *generator) body() []byte {
	req := g.next.Add(1)
	n := int(req % uint64(len(g.bodies)))
	if g.idAt != nil {
		return g.stamp(n, req)
	}
	return g.bodies[n]
}

// resend paces a load generator's resends of what the stack refused under
// pressure (HTTP 503/429, a failed publish): short waits, so the pipeline
// never idles, with jitter, so the clients do not resend in lockstep.
var resend = retry.Config{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond, Multiplier: 2, RandomizationFactor: 0.2}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}

// errRefused is an answer other than 202 Accepted.
var errRefused = errors.New("ingest refused the request")

// post sends one body to ingest's POST /v1/events; a nil error means 202 Accepted.
func post(ctx context.Context, url string, body []byte) error {
	return postAs(ctx, url+"/v1/events", http.StatusAccepted, body)
}

// postAs posts a JSON body to url; a nil error means the answer was want.
func postAs(ctx context.Context, url string, want int, body []byte) error {
	return postKey(ctx, url, "", want, body)
}

// postKey is postAs with an API key ("" for none).
func postKey(ctx context.Context, url, key string, want int, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return fmt.Errorf("%w: %s", errRefused, resp.Status)
	}
	return nil
}

type throughputResult struct {
	accepted, inserted     float64
	acceptedIn, insertedIn time.Duration
}

// stackInserted counts a single-process stack's inserted rows from the
// sink's own counter, cheap enough to read every 10 ms.
func stackInserted(st *stack.Stack) insertedCounter {
	return insertedCounter{every: 10 * time.Millisecond, count: func(context.Context) (float64, error) { return st.Inserted(), nil }}
}

// insertedCounter reads how many rows are in ClickHouse so far, every
// `every` while waiting.
type insertedCounter struct {
	every time.Duration
	count func(context.Context) (float64, error)
}

// throughput spreads f.clients HTTP clients over the ingest base URLs
// (client i posts to urls[i%len(urls)]) and waits for the rows.
func throughput(ctx context.Context, urls []string, inserted insertedCounter, gen *generator, f benchFlags) (throughputResult, error) {
	return throughputOf(ctx, urls, inserted, gen, f, func(ctx context.Context, url string) error { return post(ctx, url, gen.body()) })
}

// throughputOf is throughput with the request each client sends.
func throughputOf(ctx context.Context, urls []string, inserted insertedCounter, gen *generator, f benchFlags,
	send func(ctx context.Context, url string) error) (throughputResult, error) {
	requests := f.events / f.perRequest
	var sent atomic.Int64
	var failed atomic.Int64
	base, err := inserted.count(ctx)
	if err != nil {
		return throughputResult{}, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	for c := range f.clients {
		url := urls[c%len(urls)]
		wg.Go(func() {
			for sent.Add(1) <= int64(requests) && ctx.Err() == nil {
				// 503/429 under pressure: back off and resend, until Ctrl-C.
				if retry.Do(ctx, resend, func() error { return send(ctx, url) },
					func(int, error, time.Duration) { failed.Add(1) }) == nil {
					gen.accepted.Add(int64(f.perRequest))
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		fmt.Printf("bench: %d requests were refused under pressure and resent\n", n)
	}
	return awaitInserted(ctx, inserted, start, base, requests*f.perRequest)
}

// awaitInserted waits, once every event of the throughput phase started
// at start was accepted, until the sink has inserted them all on top of
// base, and turns both moments into rates.
func awaitInserted(ctx context.Context, inserted insertedCounter, start time.Time, base float64, events int) (throughputResult, error) {
	acceptedIn := time.Since(start)
	for {
		n, err := inserted.count(ctx)
		if err != nil {
			return throughputResult{}, fmt.Errorf("count inserted rows: %w", err)
		}
		if n >= base+float64(events) {
			break
		}
		if !retry.Sleep(ctx, inserted.every) {
			return throughputResult{}, ctx.Err()
		}
	}
	insertedIn := time.Since(start)
	total := float64(events)
	return throughputResult{
		accepted: total / acceptedIn.Seconds(), acceptedIn: acceptedIn,
		inserted: total / insertedIn.Seconds(), insertedIn: insertedIn,
	}, nil
}
