// Package chaos runs the whole pipeline as separate OS processes (a
// standalone nats-server, two clickhouse-server processes and the four
// services) under steady HTTP load, breaks it on a seeded schedule, and then
// checks that every event that got a 202 is in ClickHouse exactly once.
//
// Settings (environment):
//
//	SURGE_CHAOS_SEED      the schedule's seed (default: random, printed)
//	SURGE_CHAOS_EVENTS    events to send (default 200,000)
//	SURGE_CHAOS_DURATION  how long the load is spread over (default: events/3,000 per second, at least 60s)
//
// Every fault is printed with its time since the load started, so a failing
// seed can be replayed.
package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/services/batcher"
	"github.com/surge-events/surge/services/ingest"
	"github.com/surge-events/surge/services/partitioner"
	"github.com/surge-events/surge/services/sink"
)

const (
	shards     = 8
	perRequest = 100
	clients    = 4
	tenant     = "default"
	// retryFor bounds how long a client retries one request: well inside
	// the two-minute dedup window, so a retry of a stored request is
	// always recognised.
	retryFor = 90 * time.Second
)

// settings are the knobs of one run.
type settings struct {
	seed     uint64
	events   int
	duration time.Duration
}

func loadSettings(t *testing.T) settings {
	t.Helper()
	s := settings{seed: rand.Uint64(), events: 200_000}
	if v := os.Getenv("SURGE_CHAOS_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "SURGE_CHAOS_SEED")
		s.seed = seed
	}
	if v := os.Getenv("SURGE_CHAOS_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "SURGE_CHAOS_EVENTS")
		s.events = n
	}
	s.duration = max(60*time.Second, time.Duration(s.events/3000)*time.Second)
	if v := os.Getenv("SURGE_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "SURGE_CHAOS_DURATION")
		s.duration = d
	}
	return s
}

// pipeline is every process of a run.
type pipeline struct {
	dir        string
	nats       *proc
	natsURL    string
	natsMon    string
	clickhouse *chserver.Cluster
	services   map[string]*proc
	ingestURL  string
}

func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test skipped in -short mode")
	}
	if _, err := os.Stat(chserver.Binary); err != nil {
		t.Fatalf("clickhouse-server not installed (%v); run `go run ./tools/cmd/surge setup`", err)
	}
	cfg := loadSettings(t)
	t.Logf("chaos: seed %d (replay with SURGE_CHAOS_SEED=%d), %d events over %s", cfg.seed, cfg.seed, cfg.events, cfg.duration)
	rng := rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15))
	started := time.Now()

	p := startPipeline(t)
	t.Logf("chaos: pipeline up in %s", time.Since(started).Round(time.Millisecond))
	installAudit(t, p.chHTTP())

	schedule := makeSchedule(rng, cfg)
	for _, f := range schedule {
		t.Logf("chaos: planned %7.2fs %s", f.at.Seconds(), f.kind)
	}

	load := newLoad(p.ingestURL, cfg, rng.Uint64())
	loadStart := time.Now()
	// The load and the faults run beside each other. A fault that cannot
	// be carried out (a restart that fails) ends the schedule with an
	// error, which cancels the load at once.
	g, ctx := errgroup.WithContext(t.Context())
	g.Go(func() error { return load.run(ctx, loadStart) })
	g.Go(func() error { return p.runSchedule(ctx, t, loadStart, schedule, rng) })
	if err := g.Wait(); err != nil {
		p.dumpLogs(t)
		t.Fatalf("chaos: %v", err)
	}
	t.Logf("chaos: load done in %s: %d requests accepted, %d events accepted, %d rejected requests, %d retries, %d statuses %v",
		time.Since(loadStart).Round(time.Millisecond), load.acceptedRequests.Load(), len(load.accepted), len(load.rejectedIDs),
		load.retries.Load(), len(load.statuses()), load.statuses())
	require.Empty(t, load.failures(), "requests that never got a 202 or got an unexpected answer")

	// Drain: every accepted event in ClickHouse, nothing left in INGEST or BATCHES.
	drainStart := time.Now()
	want := uint64(len(load.accepted))
	drained := func(c *assert.CollectT) {
		uniq, _ := p.totals()
		assert.GreaterOrEqual(c, uniq, want, "distinct events in ClickHouse")
		assert.Zero(c, p.streamMsgs("INGEST"), "messages in INGEST")
		assert.Zero(c, p.streamMsgs("BATCHES"), "messages in BATCHES")
	}
	if !assert.EventuallyWithT(t, drained, 4*time.Minute+cfg.duration, time.Second, "pipeline did not drain") {
		p.dumpLogs(t)
		t.FailNow()
	}
	uniq, total := p.totals()
	t.Logf("chaos: drained in %s (clickhouse uniq=%d count=%d want=%d)", time.Since(drainStart).Round(time.Millisecond), uniq, total, want)

	p.check(t, load)
	t.Logf("chaos: seed %d passed in %s: %d events, %d faults", cfg.seed, time.Since(started).Round(time.Second), want, len(schedule))
}

func startPipeline(t *testing.T) *pipeline {
	t.Helper()
	dir := t.TempDir()
	bins := build(t, filepath.Join(dir, "bin"))
	logs := filepath.Join(dir, "logs")
	require.NoError(t, os.MkdirAll(logs, 0o755))

	free, err := ports.Free(7)
	require.NoError(t, err)
	natsPort, monPort := free[0], free[1]
	p := startServers(t, dir, bins, logs, natsPort, monPort)

	common := []string{
		"SURGE_NATS_URL=" + p.natsURL,
		"SURGE_LOG_LEVEL=info",
		"SURGE_LOG_FORMAT=json",
	}
	shardsVar := "SURGE_SHARDS=" + strconv.Itoa(shards)
	admin := map[string]int{"ingest": free[2], "partitioner": free[3], "batcher": free[4], "sink": free[5]}
	httpPort := free[6]
	p.ingestURL = fmt.Sprintf("http://127.0.0.1:%d/v1/events", httpPort)
	extra := map[string][]string{
		"ingest": {"SURGE_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(httpPort), "SURGE_INGEST_PUBLISH_TIMEOUT=3s"},
		// AckWait bounds how long a killed partitioner's requests wait for redelivery.
		"partitioner": {shardsVar, "SURGE_PUBLISH_TIMEOUT=4s", "SURGE_ACK_WAIT=6s"},
		"batcher":     {shardsVar, "SURGE_BATCH_MAX_ROWS=5000", "SURGE_BATCH_MAX_AGE=300ms"},
		// The BATCHES AckWait (2*insert timeout+retry max) bounds how long a
		// killed sink's batch in hand waits for redelivery.
		"sink": {shardsVar, "SURGE_CLICKHOUSE_ADDRS=" + strings.Join(p.clickhouse.Addrs(), ","), "SURGE_CLICKHOUSE_INSERT_TIMEOUT=5s", "SURGE_RETRY_MAX=2s"},
	}
	for _, name := range []string{"sink", "batcher", "partitioner", "ingest"} {
		env := append(slices.Clone(common), "SURGE_ADMIN_ADDR=127.0.0.1:"+strconv.Itoa(admin[name]))
		requireKnownEnv(t, name, append(slices.Clone(env), extra[name]...))
		sp := &proc{
			name: name, bin: bins[name], env: append(env, extra[name]...),
			logPath: filepath.Join(logs, name+".log"),
			ready:   fmt.Sprintf("http://127.0.0.1:%d/readyz", admin[name]),
		}
		p.services[name] = sp
		require.NoError(t, sp.start())
		t.Cleanup(func() { sp.stop(syscall.SIGKILL) })
	}
	for _, sp := range p.services {
		require.NoError(t, sp.waitReady(t.Context(), time.Minute))
	}
	return p
}

// configs are the services' Configs, whose variables the test may set.
var configs = map[string]any{
	"ingest":      &ingest.Config{},
	"partitioner": &partitioner.Config{},
	"batcher":     &batcher.Config{},
	"sink":        &sink.Config{},
}

// requireKnownEnv fails when service is given a SURGE_ variable its Config
// does not read: a renamed setting would otherwise leave the test running
// on a default without a word.
func requireKnownEnv(t *testing.T, service string, env []string) {
	t.Helper()
	var known []string
	for _, v := range config.EnvVars(configs[service]) {
		name, _, _ := strings.Cut(v, "=")
		known = append(known, name)
	}
	for _, v := range env {
		name, _, _ := strings.Cut(v, "=")
		require.Contains(t, known, name, "%s does not read %s", service, name)
	}
}

// fault is one planned failure.
type fault struct {
	at   time.Duration
	kind string
}

const (
	killPartitioner = "SIGKILL partitioner"
	killBatcher     = "SIGKILL batcher"
	killSink        = "SIGKILL sink"
	killSinkInsert  = "SIGKILL sink during an insert"
	killIngest      = "SIGKILL ingest"
	stopClickHouse  = "stop clickhouse server 1 for 20s"
	restartNATS     = "restart nats-server"
)

// makeSchedule plans each service kill twice (plus one more per 500k
// events), a ClickHouse outage and a NATS restart, at random moments of the
// load's first 85%.
func makeSchedule(rng *rand.Rand, cfg settings) []fault {
	n := 2 + cfg.events/500_000
	var kinds []string
	for range n {
		kinds = append(kinds, killPartitioner, killBatcher, killIngest)
	}
	kinds = append(kinds, killSinkInsert)
	for range n - 1 {
		kinds = append(kinds, killSink)
	}
	for range 1 + cfg.events/1_000_000 {
		kinds = append(kinds, stopClickHouse, restartNATS)
	}
	span := float64(cfg.duration) * 0.8
	out := make([]fault, 0, len(kinds))
	for _, k := range kinds {
		out = append(out, fault{at: time.Duration(float64(cfg.duration)*0.05 + rng.Float64()*span), kind: k})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].at < out[j].at })
	return out
}

// runSchedule performs the faults in order. A ClickHouse outage runs
// beside the others; it has ended when runSchedule returns. It runs off the
// test goroutine: a fault that fails ends it with the error, and so does
// the end of ctx.
func (p *pipeline) runSchedule(ctx context.Context, t *testing.T, start time.Time, schedule []fault, rng *rand.Rand) error {
	logf := func(format string, args ...any) {
		t.Logf("chaos: %7.2fs "+format, append([]any{time.Since(start).Seconds()}, args...)...)
	}
	// restart starts a killed service again after a random pause.
	restart := func(name string, pid int) error {
		sp := p.services[name]
		pause := time.Duration(200+rng.IntN(1300)) * time.Millisecond
		if err := sleep(ctx, pause); err != nil {
			return err
		}
		if err := sp.start(); err != nil {
			return err
		}
		logf("%s: killed pid %d, restarted after %s as pid %d", name, pid, pause, sp.pid())
		return nil
	}
	kill := func(name string) error {
		sp := p.services[name]
		pid := sp.pid()
		sp.stop(syscall.SIGKILL)
		return restart(name, pid)
	}
	// g runs the schedule and each ClickHouse outage; the first error ends both.
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		for _, f := range schedule {
			if err := sleep(ctx, time.Until(start.Add(f.at))); err != nil {
				return err
			}
			logf("fault: %s", f.kind)
			var err error
			switch f.kind {
			case killPartitioner:
				err = kill("partitioner")
			case killBatcher:
				err = kill("batcher")
			case killIngest:
				err = kill("ingest")
			case killSink:
				err = kill("sink")
			case killSinkInsert:
				var caught insert
				pid := p.services["sink"].pid()
				if caught, err = p.killDuringInsert(ctx, insertWindow); err == nil {
					logf("sink frozen and killed while %s ran insert %s (%d inserts ended first)", caught.server, caught.queryID, caught.missed)
					err = restart("sink", pid)
				}
			case stopClickHouse:
				srv := p.clickhouse.Servers[1]
				if err = srv.Stop(); err != nil {
					break
				}
				logf("clickhouse %s stopped", srv.Addr())
				g.Go(func() error {
					if err := sleep(ctx, 20*time.Second); err != nil {
						return err
					}
					sctx, cancel := context.WithTimeout(ctx, time.Minute)
					defer cancel()
					if err := srv.Start(sctx); err != nil {
						return fmt.Errorf("restart clickhouse %s: %w", srv.Addr(), err)
					}
					logf("clickhouse %s started again", srv.Addr())
					return nil
				})
			case restartNATS:
				pid := p.nats.pid()
				p.nats.stop(syscall.SIGTERM)
				if err = p.nats.start(); err != nil {
					break
				}
				if err = p.nats.waitReady(ctx, 30*time.Second); err != nil {
					break
				}
				logf("nats-server: stopped pid %d, restarted as pid %d on the same store", pid, p.nats.pid())
			}
			if err != nil {
				return fmt.Errorf("fault %q at %.2fs: %w", f.kind, time.Since(start).Seconds(), err)
			}
		}
		return nil
	})
	return g.Wait()
}

// insertWindow bounds how long killSinkInsert tries to catch an insert. The
// sink inserts every few hundred milliseconds under the load; most tries
// succeed within a second.
const insertWindow = 30 * time.Second

// insert is a sink insert caught running.
type insert struct {
	server, queryID string
	// missed counts the inserts that ended before the sink was frozen.
	missed int
}

// killDuringInsert kills the sink while ClickHouse runs one of its inserts.
// It polls system.processes for a sink insert, freezes the sink (SIGSTOP)
// and looks again: an insert still running once the sink is frozen was cut
// off by it, as a frozen process runs no more code, so the SIGKILL that
// follows lands inside the insert. An insert that ended in between is let
// go (SIGCONT) and the next one is tried, within window. It fails when no
// insert is caught: the fault would otherwise pass without happening.
func (p *pipeline) killDuringInsert(ctx context.Context, window time.Duration) (insert, error) {
	sink := p.services["sink"]
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	var caught insert
	var last error
	for {
		srv, qid, err := p.runningInsert()
		if err != nil {
			last = err
		}
		if qid != "" {
			if err := sink.freeze(); err != nil {
				return caught, err
			}
			running, err := insertRunning(srv, qid)
			if err != nil {
				last = err
			}
			if err == nil && running {
				sink.stop(syscall.SIGKILL)
				caught.server, caught.queryID = srv.Addr(), qid
				return caught, nil
			}
			if err := sink.thaw(); err != nil {
				return caught, err
			}
			caught.missed++
		}
		if err := sleep(ctx, 2*time.Millisecond); err != nil {
			return caught, fmt.Errorf("no sink insert still running once the sink was frozen within %s (%d ended first, last query error: %v): %w",
				window, caught.missed, last, err)
		}
	}
}

// runningInsert returns a sink insert ClickHouse runs now and its server,
// or "" when there is none. A server that does not answer (stopped for an
// outage) has none; the last error is returned for the report.
func (p *pipeline) runningInsert() (*chserver.Server, string, error) {
	var last error
	for _, srv := range p.clickhouse.Servers {
		out, err := chserver.Query(srv.HTTPAddr(), "SELECT query_id FROM system.processes WHERE startsWith(query_id, 'surge-sink-') AND startsWith(query, 'INSERT') LIMIT 1")
		if err != nil {
			last = err
			continue
		}
		if qid := strings.TrimSpace(out); qid != "" {
			return srv, qid, nil
		}
	}
	return nil, "", last
}

// insertRunning reports whether the query qid still runs on srv.
func insertRunning(srv *chserver.Server, qid string) (bool, error) {
	if strings.ContainsAny(qid, `'\`) {
		return false, fmt.Errorf("unexpected query id %q", qid)
	}
	out, err := chserver.Query(srv.HTTPAddr(), "SELECT count() FROM system.processes WHERE query_id = '"+qid+"'")
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(out) != "0", nil
}

// httpc serves the test's own requests to ClickHouse and the NATS monitor.
var httpc = &http.Client{Timeout: 30 * time.Second}

// totals sums uniqExact(event_id) and count() over the servers, 0 when a
// server does not answer.
func (p *pipeline) totals() (uniq, total uint64) {
	return chTotals(p.chHTTP(), allRows)
}

// chTotals sums uniqExact(event_id) and count() of the rows where keeps
// over the servers at servers (HTTP addresses), 0 when a server does not
// answer.
func chTotals(servers []string, where string) (uniq, total uint64) {
	for _, srv := range servers {
		out, err := chserver.Query(srv, "SELECT uniqExact(event_id), count() FROM surge.events_local WHERE "+where)
		if err != nil {
			return 0, 0
		}
		var u, c uint64
		if _, err := fmt.Sscan(out, &u, &c); err != nil {
			return 0, 0
		}
		uniq += u
		total += c
	}
	return uniq, total
}

// streamMsgs reads a stream's message count from the NATS monitor; -1 when
// it does not answer.
func (p *pipeline) streamMsgs(stream string) int64 {
	resp, err := httpc.Get(p.natsMon + "/jsz?streams=true")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var jsz struct {
		AccountDetails []struct {
			StreamDetail []struct {
				Name  string `json:"name"`
				State struct {
					Msgs int64 `json:"messages"`
				} `json:"state"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
		return -1
	}
	for _, a := range jsz.AccountDetails {
		for _, s := range a.StreamDetail {
			if s.Name == stream {
				return s.State.Msgs
			}
		}
	}
	return -1
}

// check asserts exactly once, from events_local (checkExactlyOnce) and
// from the audit of inserts, which no merge folds (checkInsertedOnce; the
// ClickHouse outage is a graceful stop), and that DEAD_LETTER is empty.
func (p *pipeline) check(t *testing.T, load *load) {
	t.Helper()
	checkExactlyOnce(t, p.chHTTP(), allRows, load.accepted, load.rejectedIDs)
	checkInsertedOnce(t, p.chHTTP(), load.accepted, false)
	require.Equal(t, int64(0), p.streamMsgs("DEAD_LETTER"), "dead letters")
}

// chHTTP is the HTTP address of every ClickHouse server, in shard-server order.
func (p *pipeline) chHTTP() []string {
	var addrs []string
	for _, srv := range p.clickhouse.Servers {
		addrs = append(addrs, srv.HTTPAddr())
	}
	return addrs
}

// allRows is the condition on events_local that keeps every row; the
// crash loop's prefilled table uses ownRows instead.
const allRows = "1"

// checkExactlyOnce asserts exactly once over the rows of events_local that
// where keeps on the ClickHouse servers at servers (HTTP addresses, in
// shard-server order): per server no duplicates without FINAL (count() =
// uniqExact(event_id)), the set of ids equals accepted, rejected ids
// absent, each row on its shard and server.
func checkExactlyOnce(t *testing.T, servers []string, where string, accepted map[string]struct{}, rejected []string) {
	t.Helper()
	seen := make(map[string]int, len(accepted))
	for i, srv := range servers {
		out, err := chserver.Query(srv, "SELECT count(), uniqExact(event_id) FROM surge.events_local WHERE "+where)
		require.NoError(t, err)
		var c, u uint64
		_, err = fmt.Sscan(out, &c, &u)
		require.NoError(t, err)
		require.Equal(t, u, c, "server %d: count() != uniqExact(event_id) without FINAL: duplicates", i)

		out, err = chserver.Query(srv, "SELECT event_id, tenant, user_id, shard FROM surge.events_local WHERE "+where+" FORMAT TabSeparated")
		require.NoError(t, err)
		sc := bufio.NewScanner(strings.NewReader(out))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		rows := 0
		for sc.Scan() {
			f := strings.Split(sc.Text(), "\t")
			require.Len(t, f, 4, sc.Text())
			id, ten, user := f[0], f[1], f[2]
			k, err := strconv.Atoi(f[3])
			require.NoError(t, err)
			_, ok := accepted[id]
			require.True(t, ok, "event %s in ClickHouse never got a 202", id)
			require.Equal(t, shard.Of(ten, user, shards), k, "event %s on the wrong shard", id)
			require.Equal(t, i, k%len(servers), "event %s of shard %d on server %d", id, k, i)
			_, prev := seen[id]
			require.False(t, prev, "event %s on two servers", id)
			seen[id] = i
			rows++
		}
		require.NoError(t, sc.Err())
		require.Equal(t, int(c), rows)
	}
	for id := range accepted {
		_, ok := seen[id]
		require.True(t, ok, "accepted event %s is not in ClickHouse", id)
	}
	for _, id := range rejected {
		_, ok := seen[id]
		require.False(t, ok, "rejected event %s is in ClickHouse", id)
	}
	require.Len(t, seen, len(accepted))
}

func (p *pipeline) dumpLogs(t *testing.T) {
	t.Helper()
	for name, sp := range p.services {
		t.Logf("---- %s log (last lines) ----\n%s", name, sp.tail(30))
	}
	t.Logf("---- nats-server log ----\n%s", p.nats.tail(20))
}

// load is the HTTP client side: it sends each request until a 202 and
// records what was accepted and what was rejected.
type load struct {
	url   string
	cfg   settings
	seed  uint64
	httpc *http.Client

	tally
	rejectedIDs []string // guarded by tally.mu
}

func newLoad(u string, cfg settings, seed uint64) *load {
	l := &load{url: u, cfg: cfg, seed: seed, httpc: &http.Client{Timeout: 10 * time.Second}}
	l.init(cfg.events)
	return l
}

// run sends cfg.events events in requests of perRequest, paced evenly over
// cfg.duration by clients workers, and one invalid request every 50. It
// stops early when ctx ends and then returns ctx.Err().
func (l *load) run(ctx context.Context, start time.Time) error {
	requests := (l.cfg.events + perRequest - 1) / perRequest
	interval := l.cfg.duration / time.Duration(requests)
	g, ctx := errgroup.WithContext(ctx)
	next := make(chan int)
	for w := range clients {
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(l.seed, uint64(w)))
			for r := range next {
				l.send(ctx, r, rng)
				if r%50 == 0 {
					l.sendInvalid(ctx, r)
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(next)
		for r := range requests {
			if err := sleep(ctx, time.Until(start.Add(time.Duration(r)*interval))); err != nil {
				return err
			}
			select {
			case next <- r:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	return g.Wait()
}

func (l *load) send(ctx context.Context, r int, rng *rand.Rand) {
	body, ids := eventsBody("ev", "chaos", r, min(perRequest, l.cfg.events-r*perRequest), rng)
	key := "chaos-" + strconv.Itoa(r)
	l.untilAccepted(ctx, r, ids, func(int) string { return l.post(ctx, body, key) },
		func(attempt int) time.Duration { return min(time.Duration(attempt)*100*time.Millisecond, time.Second) })
}

// sendInvalid posts a request with one event missing its user_id: the
// whole request must be refused with 400 and none of its ids stored.
func (l *load) sendInvalid(ctx context.Context, r int) {
	good, bad := fmt.Sprintf("bad-%d-0", r), fmt.Sprintf("bad-%d-1", r)
	body := fmt.Sprintf(`[{"event_id":%q,"user_id":"u1","type":"chaos"},{"event_id":%q,"type":"chaos"}]`, good, bad)
	for attempt := 1; attempt <= 100; attempt++ {
		status := l.post(ctx, body, "bad-"+strconv.Itoa(r))
		if status == "400" {
			l.mu.Lock()
			l.rejectedIDs = append(l.rejectedIDs, good, bad)
			l.mu.Unlock()
			return
		}
		if status == "202" {
			l.fail(fmt.Sprintf("invalid request %d accepted", r))
			return
		}
		// Ingest is down: the 400 comes once it is back.
		if sleep(ctx, 200*time.Millisecond) != nil {
			return
		}
	}
	l.fail(fmt.Sprintf("invalid request %d: never answered 400", r))
}

func (l *load) post(ctx context.Context, body, key string) string {
	return postEvents(ctx, l.httpc, l.url, body, key)
}

// postEvents posts one JSON body to ingest with an Idempotency-Key and
// returns the status code as text, or "error" / "connection error".
func postEvents(ctx context.Context, c *http.Client, url, body, key string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return "error"
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.Do(req)
	if err != nil {
		return "connection error"
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return strconv.Itoa(resp.StatusCode)
}

// startServers starts a pipeline's servers under dir, without its
// services: the NATS server (natsPort, monitoring monPort) and two
// ClickHouse servers.
func startServers(t *testing.T, dir string, bins map[string]string, logs string, natsPort, monPort int) *pipeline {
	t.Helper()
	natsConf := filepath.Join(dir, "nats.conf")
	require.NoError(t, os.WriteFile(natsConf, fmt.Appendf(nil, `
host: 127.0.0.1
port: %d
http: "127.0.0.1:%d"
max_payload: 16777216
jetstream {
  store_dir: %q
  max_memory_store: 268435456
}
`, natsPort, monPort, filepath.Join(dir, "jetstream")), 0o644))
	p := &pipeline{
		dir:      dir,
		natsURL:  fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		natsMon:  fmt.Sprintf("http://127.0.0.1:%d", monPort),
		services: map[string]*proc{},
	}
	p.nats = &proc{
		name: "nats-server", bin: bins["nats-server"], args: []string{"-c", natsConf},
		logPath: filepath.Join(logs, "nats-server.log"), ready: p.natsMon + "/healthz?js-enabled-only=true",
	}
	require.NoError(t, p.nats.start())
	t.Cleanup(func() { p.nats.stop(syscall.SIGTERM) })
	require.NoError(t, p.nats.waitReady(t.Context(), 30*time.Second))

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var err error
	p.clickhouse, err = chserver.StartCluster(ctx, filepath.Join(dir, "clickhouse"), 2)
	require.NoError(t, err)
	t.Cleanup(p.clickhouse.Stop)
	return p
}
