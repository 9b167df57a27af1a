package chaos

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/tenants"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/producers"
)

const (
	// noisyRate and noisyBurst are tenant A's quota, set at run time.
	noisyRate, noisyBurst = 2000, 4000
	// backlogMsgs of backlogPerMsg events are A's producer backlog.
	backlogMsgs, backlogPerMsg = 2000, 100
	// tenantPhase is how long each phase's senders send.
	tenantPhase = 5 * time.Second
	// seenEvery is how often ClickHouse is polled for B's rows.
	seenEvery = 25 * time.Millisecond
	// tenantsFetchBatch is the partitioner's fetch_batch: a tenant's turn
	// is at most that many INGEST messages.
	tenantsFetchBatch = 10
	// workBoundTurns bounds, in turns of A, the work the partitioner does
	// for A while one of B's requests waits. It does not depend on A's
	// backlog: after discovery (info_interval, 50 ms here) finds B, every
	// other turn is B's. It leaves room for discovery's delay on a loaded
	// machine (A's turns go on meanwhile); served in INGEST's order, B's
	// first requests would wait for A's whole backlog, 200 turns.
	workBoundTurns = 30
)

// TestNoisyTenantDoesNotDelayOthers runs the pipeline with two ingests
// and tenants A and B. First B alone sends 500 events/s over HTTP; then A,
// limited at run time to 2,000 events/s (burst 4,000), sends 10,000/s
// through both ingests, with a producer backlog of 200,000 events waiting
// in INGEST, while B sends as before. B is never refused; A's 429s say
// when to retry and what A gets over both instances is its quota once;
// every accepted event lands in ClickHouse exactly once. B's delay is
// bounded in work, counted in EVENTS' order: few of A's INGEST messages
// are partitioned between a request of B's acceptance and its events'
// arrival in EVENTS, however long A's backlog; and the partitioner paces
// A to its quota, so A's backlog reaches EVENTS at most at the quota
// until the quota is lifted at run time. The phases run alone, beside
// A, beside A again, then alone again with A paused by a quota of one
// event a second, so that a machine drifting during the test weighs on
// both sides alike. B's ingest-to-queryable p99 alone and beside A, each
// pooled over its two phases, and their ratio are logged, not asserted:
// wall time on a shared machine measures the machine too (the issue's
// bound of 1.2x is read from that line).
func TestNoisyTenantDoesNotDelayOthers(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	if _, err := os.Stat(chserver.Binary); err != nil {
		t.Fatalf("clickhouse-server not installed (%v); run `go run ./tools/cmd/surge setup`", err)
	}
	started := time.Now()
	// The partitioner's turns are small and discovery frequent, so that
	// a bound in turns means something beside A's 2,000 messages.
	p := startTwoIngests(t, []string{"SURGE_INGEST_API_KEYS=key-a=A,key-b=B"},
		[]string{"SURGE_FETCH_BATCH=" + strconv.Itoa(tenantsFetchBatch), "SURGE_INFO_INTERVAL=50ms"})
	installAudit(t, p.chHTTP())
	t.Logf("tenants: pipeline up in %s", time.Since(started).Round(time.Millisecond))
	ctx := t.Context()
	urls := make([]string, len(p.ingestURLs))
	for i, u := range p.ingestURLs {
		urls[i] = strings.TrimSuffix(u, "/v1/batch") + "/v1/events"
	}
	nc, err := nats.Connect(p.natsURL)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	tap := startEventsTap(t, nc)

	// B's consumer, the columns of its events' shape and the first
	// inserts are made before anything is measured.
	warm := &tenantLoad{tenant: "B", key: "key-b", prefix: "b0", perRequest: 10}
	warm.post(ctx, urls[0], 0, 0, tap)
	require.Empty(t, warm.problems())
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		total, _, err := rowsOf(p.chHTTP(), "B", "b0-")
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(10), total)
		}
	}, time.Minute, 50*time.Millisecond)

	// Phase "B alone".
	alone := &tenantLoad{tenant: "B", key: "key-b", prefix: "b1", perRequest: 10, every: 40 * time.Millisecond}
	aloneLat := measureB(t, p, tap, alone, urls, nil)

	// Phase "A noisy". The quota counts both ingests once each has seen
	// the other: each logs "live instances" when its count leaves 1.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, name := range []string{"ingest", "ingest-b"} {
			n, err := countLines(p.services[name].logPath, "live instances", 0)
			if assert.NoError(c, err) {
				assert.Positive(c, n, "%s has not counted the other ingest", name)
			}
		}
	}, 30*time.Second, 50*time.Millisecond)
	noisy := &tenantLoad{tenant: "A", key: "key-a", prefix: "ah", perRequest: 100, every: 20 * time.Millisecond}
	probes := setQuota(t, js, urls, noisy, tap)

	// A's backlog waits whole in INGEST: the partitioner is frozen while
	// it is published and thawed as the senders start.
	ingest, err := js.Stream(ctx, streams.Ingest)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		info, err := ingest.Info(ctx)
		if assert.NoError(c, err) {
			assert.Zero(c, info.State.Msgs, "INGEST messages before A's backlog")
		}
	}, 30*time.Second, 20*time.Millisecond)
	part := p.services["partitioner"]
	require.NoError(t, part.freeze())
	t.Cleanup(func() { _ = part.thaw() })
	backlog := publishBacklog(t, js)
	info, err := ingest.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(backlogMsgs), info.State.Msgs, "A's backlog waiting in INGEST")
	require.NoError(t, part.thaw())
	thawed, aAtThaw := time.Now(), tap.aMsgs.Load()

	b := &tenantLoad{tenant: "B", key: "key-b", prefix: "b2", perRequest: 10, every: 40 * time.Millisecond}
	var elapsed time.Duration
	noisyLat := measureB(t, p, tap, b, urls, func(ctx context.Context, until time.Time) {
		start := time.Now()
		noisy.run(ctx, urls, until, tap)
		elapsed = time.Since(start)
	})
	paced, pacedFor := tap.aMsgs.Load()-aAtThaw, time.Since(thawed)

	// A second phase beside A (A's backlog still waits, its senders send
	// again), then B alone again with A's backlog paused by a quota of
	// one event a second: alone, beside, beside, alone, so that a machine
	// that drifts during the test weighs on both sides alike.
	b3 := &tenantLoad{tenant: "B", key: "key-b", prefix: "b3", perRequest: 10, every: 40 * time.Millisecond}
	noisy2 := &tenantLoad{tenant: "A", key: "key-a", prefix: "ai", perRequest: 100, every: 20 * time.Millisecond}
	noisyLat2 := measureB(t, p, tap, b3, urls, func(ctx context.Context, until time.Time) { noisy2.run(ctx, urls, until, tap) })
	require.Empty(t, noisy2.problems(), "A's answers other than 202 and 429")
	st, err := tenants.Open(ctx, js, 1)
	require.NoError(t, err)
	require.NoError(t, st.Set(ctx, "A", tenants.Limits{EventsPerSecond: 1, Burst: 1}))
	alone2 := &tenantLoad{tenant: "B", key: "key-b", prefix: "b4", perRequest: 10, every: 40 * time.Millisecond}
	aBeforeAlone2 := tap.aMsgs.Load()
	aloneLat2 := measureB(t, p, tap, alone2, urls, nil)
	// Paused, A's backlog let through at most the turns under way when
	// the pause was set (each at most fetch_batch messages) and the one
	// message a turn takes when it is its turn: at 2,000 events/s it
	// would be some 100 messages in the phase.
	duringAlone2 := tap.aMsgs.Load() - aBeforeAlone2
	t.Logf("tenants: A's messages partitioned while A was paused and B alone: %d", duringAlone2)
	require.LessOrEqual(t, duringAlone2, int64(3*tenantsFetchBatch), "A's messages partitioned while A was paused")

	// A's quota: refused with Retry-After, the quota once over both
	// instances (burst, then the rate), with 10% either way.
	require.Empty(t, noisy.problems(), "A's answers other than 202 and 429")
	aAccepted, aRefused := noisy.acceptedEvents(), noisy.refusedEvents()
	want := float64(noisyBurst) + noisyRate*elapsed.Seconds()
	t.Logf("tenants: A sent %d events/s, accepted %d in %s (quota %.0f), refused %d in %d requests",
		int(float64(aAccepted+aRefused)/elapsed.Seconds()), aAccepted, elapsed.Round(time.Millisecond), want, aRefused, noisy.refusedRequests())
	require.Positive(t, aRefused)
	require.Zero(t, noisy.noRetryAfter(), "429s of A without Retry-After")
	require.InEpsilon(t, want, float64(aAccepted), 0.10)

	// B's delay in work: A's messages partitioned while each request of B
	// waited, in EVENTS' order.
	bound := workBoundTurns * tenantsFetchBatch
	bIDs := b.acceptedIDs()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, len(bIDs), tap.arrived(bIDs), "B's events the tap has seen in EVENTS")
	}, 30*time.Second, 10*time.Millisecond)
	waited, behind := tap.waited(t, b)
	slices.Sort(waited)
	t.Logf("tenants: A's messages partitioned while a request of B waited: median %d, max %d (bound %d); %d of B's requests accepted with more than %d of A's backlog waiting",
		waited[len(waited)/2], waited[len(waited)-1], bound, behind, backlogMsgs/2)
	require.Positive(t, behind, "no request of B arrived behind A's backlog: the bound was not put to the test")
	require.LessOrEqual(t, waited[len(waited)-1], bound, "A's messages partitioned while a request of B waited")

	// The partitioner paces A to its quota, whatever its entry: A's
	// backlog and requests reached EVENTS at most at the quota (its
	// burst, the rate since the thaw, a turn more), not at full speed.
	aBound := (noisyBurst + noisyRate*pacedFor.Seconds() + tenantsFetchBatch*backlogPerMsg) / backlogPerMsg
	t.Logf("tenants: A's messages partitioned in the %s since the thaw: %d of %d waiting (quota bound %.0f)", pacedFor.Round(time.Millisecond), paced, backlogMsgs, aBound)
	require.LessOrEqual(t, float64(paced), aBound, "A's messages partitioned beyond its quota")
	aloneAll, besideAll := pooled(aloneLat, aloneLat2), pooled(noisyLat, noisyLat2)
	t.Logf("tenants: B's ingest-to-queryable p99 alone %s then %s, beside A %s then %s; pooled p50 %s alone, %s beside A; p99 %s alone, %s beside A: ratio %.2f",
		aloneLat.p99, aloneLat2.p99, noisyLat.p99, noisyLat2.p99, aloneAll.p50, besideAll.p50, aloneAll.p99, besideAll.p99,
		float64(besideAll.p99)/float64(aloneAll.p99))

	// Every accepted event once, nothing refused stored.
	accepted := map[string]struct{}{}
	for _, l := range []*tenantLoad{warm, alone, b, b3, alone2, noisy, noisy2, probes} {
		for _, id := range l.acceptedIDs() {
			accepted[id] = struct{}{}
		}
	}
	for _, id := range backlog {
		accepted[id] = struct{}{}
	}
	// The rest of A's backlog goes on at full speed once its quota is
	// lifted at run time.
	require.NoError(t, st.Unset(ctx, "A"))
	p.waitIdle(t, "A", "a", uint64(aAccepted+noisy2.acceptedEvents()+probes.acceptedEvents()+len(backlog)))
	for _, g := range []struct {
		prefix string
		tenant string
		want   int
	}{
		{"ah-", "A", aAccepted}, {"ai-", "A", noisy2.acceptedEvents()}, {"an-", "A", len(backlog)}, {"ap-", "A", probes.acceptedEvents()},
		{"b0-", "B", warm.acceptedEvents()}, {"b1-", "B", alone.acceptedEvents()}, {"b2-", "B", b.acceptedEvents()},
		{"b3-", "B", b3.acceptedEvents()}, {"b4-", "B", alone2.acceptedEvents()},
	} {
		total, uniq, err := rowsOf(p.chHTTP(), g.tenant, g.prefix)
		require.NoError(t, err)
		require.Equal(t, uint64(g.want), uniq, "%s events %s* in ClickHouse", g.tenant, g.prefix)
		require.Equal(t, uint64(g.want), total, "%s events %s* once each, without FINAL", g.tenant, g.prefix)
	}
	checkExactlyOnce(t, p.chHTTP(), allRows, accepted, append(noisy.refusedIDs(), noisy2.refusedIDs()...))
	checkInsertedOnce(t, p.chHTTP(), accepted, false)
	require.Equal(t, int64(0), p.streamMsgs(streams.DeadLetter), "dead letters")
	t.Logf("tenants: passed in %s: %d events stored once", time.Since(started).Round(time.Second), len(accepted))
}

// latency is a phase's ingest-to-queryable latencies of B's events.
type latency struct {
	p50, p99, max time.Duration
	all           []time.Duration // sorted
}

// pooled is the latencies of several phases together.
func pooled(ls ...latency) latency {
	var all []time.Duration
	for _, l := range ls {
		all = append(all, l.all...)
	}
	slices.Sort(all)
	return latency{p50: quantile(all, 0.50), p99: quantile(all, 0.99), max: all[len(all)-1], all: all}
}

// measureB runs a phase: B's load l through every ingest for tenantPhase,
// beside also (run with the same end, when not nil), while ClickHouse is
// polled for B's rows. It waits until every event of B accepted is seen
// and returns their latencies: from the request's send to the first poll
// that saw the event. B is never refused.
//
// There is no insert time in events_local (received_at is in seconds), so
// the time an event turns queryable is taken from the outside: ClickHouse
// reads the parts there are when a query starts, so an event a poll
// returns was queryable when that poll started, and was not when the
// previous poll of its server started. Each latency is thus at most one
// poll's period and duration (seenEvery and a few ms) too long.
func measureB(t *testing.T, p *dedupPipeline, tap *eventsTap, l *tenantLoad, urls []string, also func(ctx context.Context, until time.Time)) latency {
	t.Helper()
	seen := &firstSeen{at: map[string]time.Time{}}
	pollCtx, stopPolls := context.WithCancel(t.Context())
	defer stopPolls()
	var polls sync.WaitGroup
	polls.Go(func() { seen.run(pollCtx, p.chHTTP(), l.tenant, l.prefix+"-") })

	until := time.Now().Add(tenantPhase)
	var senders sync.WaitGroup
	senders.Go(func() { l.run(t.Context(), urls, until, tap) })
	if also != nil {
		senders.Go(func() { also(t.Context(), until) })
	}
	senders.Wait()
	require.Empty(t, l.problems(), "B's answers other than 202: B is under no quota")
	require.Zero(t, l.refusedEvents(), "B refused")
	ids := l.acceptedIDs()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, len(ids), seen.count(), "B's events seen in ClickHouse")
	}, 2*time.Minute, 50*time.Millisecond)
	stopPolls()
	polls.Wait()
	require.NoError(t, seen.failure(), "polls of ClickHouse")

	var lat []time.Duration
	for _, r := range l.sentRequests() {
		for _, id := range r.ids {
			at, ok := seen.first(id)
			require.True(t, ok, "event %s never seen", id)
			lat = append(lat, at.Sub(r.sent))
		}
	}
	slices.Sort(lat)
	out := latency{p50: quantile(lat, 0.50), p99: quantile(lat, 0.99), max: lat[len(lat)-1], all: lat}
	t.Logf("tenants: B (%s): %d events in %d requests, ingest-to-queryable p50 %s p99 %s max %s",
		l.prefix, len(lat), len(l.sentRequests()), out.p50, out.p99, out.max)
	return out
}

// quantile is the q quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	return sorted[max(int(math.Ceil(q*float64(len(sorted))))-1, 0)]
}

// setQuota limits A at run time and waits until both ingests apply it:
// each answers a request of A with its RateLimit-Limit. The probes'
// events are stored like any other; they are returned as a load.
func setQuota(t *testing.T, js jetstream.JetStream, urls []string, a *tenantLoad, tap *eventsTap) *tenantLoad {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := tenants.Open(ctx, js, 1)
	require.NoError(t, err)
	require.NoError(t, st.Set(ctx, a.tenant, tenants.Limits{EventsPerSecond: noisyRate, Burst: noisyBurst}))
	probes := &tenantLoad{tenant: a.tenant, key: a.key, prefix: "ap", perRequest: 1}
	r := 0
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for i, u := range urls {
			r++
			assert.Equal(c, strconv.Itoa(noisyRate), probes.post(t.Context(), u, i, r, tap), "RateLimit-Limit of ingest %d", i)
		}
	}, 20*time.Second, 20*time.Millisecond)
	require.Empty(t, probes.problems())
	return probes
}

// publishBacklog publishes A's producer backlog, backlogMsgs messages of
// backlogPerMsg events, and returns its event ids.
func publishBacklog(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ids := make([]string, 0, backlogMsgs*backlogPerMsg)
	futures := make([]jetstream.PubAckFuture, 0, backlogMsgs)
	events := make([]producers.Event, backlogPerMsg)
	for m := range backlogMsgs {
		for i := range events {
			id := fmt.Sprintf("an-%d-%d", m, i)
			events[i] = producers.Event{ID: id, UserID: fmt.Sprintf("u%d", (m*backlogPerMsg+i)%997), Type: "click"}
			ids = append(ids, id)
		}
		f, err := js.PublishAsync(streams.ProducerPrefix+"A.backlog", producers.Message(events))
		require.NoError(t, err)
		futures = append(futures, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatal("A's backlog was not stored within a minute")
	}
	for _, f := range futures {
		select {
		case err := <-f.Err():
			require.NoError(t, err, "publish of A's backlog")
		case <-f.Ok():
		}
	}
	return ids
}

// tenantLoad is one tenant's HTTP sender: every perRequest events, per
// ingest, and what it was answered. Its methods run off the test
// goroutine and fail no test; the test reads the tally after.
type tenantLoad struct {
	tenant, key, prefix string
	perRequest          int
	every               time.Duration

	mu           sync.Mutex
	requests     []sentRequest // accepted ones
	refused      []string      // ids of the 429s
	refusedReqs  int
	missingRetry int
	errs         []error
}

// sentRequest is one accepted request.
type sentRequest struct {
	ids  []string
	sent time.Time
	// aMark is how many of A's INGEST messages the tap had seen in
	// EVENTS when the 202 came back.
	aMark int64
}

// run sends a request to each of urls every l.every until until or ctx's
// end.
func (l *tenantLoad) run(ctx context.Context, urls []string, until time.Time, tap *eventsTap) {
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Go(func() {
			tick := time.NewTicker(l.every)
			defer tick.Stop()
			for r := 0; ; r++ {
				select {
				case <-ctx.Done():
					return
				case now := <-tick.C:
					if now.After(until) {
						return
					}
				}
				l.post(ctx, u, i, r, tap)
			}
		})
	}
	wg.Wait()
}

// post sends request r to the ingest at url (number instance) and records
// the answer; it returns the RateLimit-Limit header, if any.
func (l *tenantLoad) post(ctx context.Context, url string, instance, r int, tap *eventsTap) string {
	ids := make([]string, l.perRequest)
	var b strings.Builder
	b.WriteByte('[')
	for i := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		ids[i] = fmt.Sprintf("%s-%d-%d-%d", l.prefix, instance, r, i)
		fmt.Fprintf(&b, `{"event_id":%q,"user_id":"u%d","type":"click"}`, ids[i], (r*l.perRequest+i)%997)
	}
	b.WriteByte(']')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(b.String()))
	if err != nil {
		l.failed(fmt.Errorf("%s request %s: %w", l.tenant, ids[0], err))
		return ""
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+l.key)
	sent := time.Now()
	resp, err := httpc.Do(req)
	if err != nil {
		l.failed(fmt.Errorf("%s request %s: %w", l.tenant, ids[0], err))
		return ""
	}
	_ = resp.Body.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	switch resp.StatusCode {
	case http.StatusAccepted:
		l.requests = append(l.requests, sentRequest{ids: ids, sent: sent, aMark: tap.aMsgs.Load()})
	case http.StatusTooManyRequests:
		l.refused = append(l.refused, ids...)
		l.refusedReqs++
		if resp.Header.Get("Retry-After") == "" {
			l.missingRetry++
		}
	default:
		l.errs = append(l.errs, fmt.Errorf("%s request %s: %s", l.tenant, ids[0], resp.Status))
	}
	return resp.Header.Get("RateLimit-Limit")
}

func (l *tenantLoad) failed(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

// problems are the answers other than 202 and 429, and failed requests.
func (l *tenantLoad) problems() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

func (l *tenantLoad) sentRequests() []sentRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.requests)
}

func (l *tenantLoad) acceptedIDs() []string {
	var ids []string
	for _, r := range l.sentRequests() {
		ids = append(ids, r.ids...)
	}
	return ids
}

func (l *tenantLoad) acceptedEvents() int { return len(l.acceptedIDs()) }

func (l *tenantLoad) refusedIDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.refused)
}

func (l *tenantLoad) refusedEvents() int { return len(l.refusedIDs()) }

func (l *tenantLoad) refusedRequests() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refusedReqs
}

func (l *tenantLoad) noRetryAfter() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.missingRetry
}

// firstSeen is when each event of a tenant was first seen in ClickHouse.
type firstSeen struct {
	mu  sync.Mutex
	at  map[string]time.Time
	err error // the first failed poll
}

// run polls every server every seenEvery for the ids of tenant starting
// with prefix until ctx ends.
func (f *firstSeen) run(ctx context.Context, servers []string, tenant, prefix string) {
	q := fmt.Sprintf("SELECT event_id FROM surge.events_local WHERE tenant = '%s' AND startsWith(event_id, '%s') FORMAT TabSeparated", tenant, prefix)
	tick := time.NewTicker(seenEvery)
	defer tick.Stop()
	for {
		for _, srv := range servers {
			start := time.Now()
			out, err := chserver.Query(srv, q)
			if err != nil {
				if ctx.Err() == nil {
					f.fail(fmt.Errorf("poll %s: %w", srv, err))
				}
				continue
			}
			f.saw(out, start)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (f *firstSeen) saw(out string, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if id := sc.Text(); id != "" {
			if _, ok := f.at[id]; !ok {
				f.at[id] = at
			}
		}
	}
}

func (f *firstSeen) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *firstSeen) failure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *firstSeen) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.at)
}

func (f *firstSeen) first(id string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	at, ok := f.at[id]
	return at, ok
}

// eventsTap follows EVENTS' subjects as the partitioner publishes to them
// (a plain subscription: the batcher purges EVENTS once it has cut its
// batches, so the stream cannot be read back after the run). It counts
// A's INGEST messages with a group in EVENTS (a message's groups carry its
// INGEST sequence in their message ids), and notes that count as each
// event of B arrives: the work done for A, in EVENTS' order, not the time
// taken.
type eventsTap struct {
	sub   *nats.Subscription
	aMsgs atomic.Int64

	mu    sync.Mutex
	ids   map[string]bool  // message ids seen: a republished group counts once
	aSeqs map[string]bool  // A's INGEST sequences seen
	bAt   map[string]int64 // B's event id: aMsgs when its group arrived
	err   error
}

func startEventsTap(t *testing.T, nc *nats.Conn) *eventsTap {
	t.Helper()
	tap := &eventsTap{ids: map[string]bool{}, aSeqs: map[string]bool{}, bAt: map[string]int64{}}
	sub, err := nc.Subscribe("events.shard.*", tap.handle)
	require.NoError(t, err)
	require.NoError(t, sub.SetPendingLimits(-1, -1))
	require.NoError(t, nc.Flush())
	tap.sub = sub
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return tap
}

func (tap *eventsTap) handle(m *nats.Msg) {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	id := m.Header.Get(jetstream.MsgIDHeader)
	if tap.ids[id] {
		return
	}
	tap.ids[id] = true
	events, err := event.Decode(m.Data)
	if err != nil || len(events) == 0 {
		if tap.err == nil {
			tap.err = fmt.Errorf("EVENTS message %s: %d events: %w", id, len(events), err)
		}
		return
	}
	switch events[0].Tenant {
	case "A":
		seq, _, _ := strings.Cut(id, ":")
		if !tap.aSeqs[seq] {
			tap.aSeqs[seq] = true
			tap.aMsgs.Add(1)
		}
	case "B":
		for _, e := range events {
			if _, ok := tap.bAt[e.EventID]; !ok {
				tap.bAt[e.EventID] = tap.aMsgs.Load()
			}
		}
	}
}

// arrived counts the events of ids the tap has seen.
func (tap *eventsTap) arrived(ids []string) int {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := tap.bAt[id]; ok {
			n++
		}
	}
	return n
}

// waited returns, for each accepted request of l, how many of A's INGEST
// messages arrived in EVENTS between its 202 and its last group (at most:
// the tap may lag at the 202, never ahead), and how many of l's requests
// were accepted while more than half of A's backlog still waited.
func (tap *eventsTap) waited(t *testing.T, l *tenantLoad) ([]int, int) {
	t.Helper()
	tap.mu.Lock()
	defer tap.mu.Unlock()
	require.NoError(t, tap.err)
	dropped, err := tap.sub.Dropped()
	require.NoError(t, err)
	require.Zero(t, dropped, "messages the tap dropped")
	var waited []int
	behind := 0
	for _, r := range l.sentRequests() {
		last := int64(-1)
		for _, id := range r.ids {
			at, ok := tap.bAt[id]
			require.True(t, ok, "event %s of B never seen in EVENTS", id)
			last = max(last, at)
		}
		waited = append(waited, int(max(last-r.aMark, 0)))
		if r.aMark < backlogMsgs/2 {
			behind++
		}
	}
	require.NotEmpty(t, waited, "no request of B accepted")
	return waited, behind
}
