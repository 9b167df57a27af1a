package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/failpoint"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/ports"
	testkitproc "github.com/surge-events/surge/pkg/testkit/proc"
	"github.com/surge-events/surge/pkg/testkit/surgebin"
	"github.com/surge-events/surge/services/partitioner"
	"github.com/surge-events/surge/services/sink"
	"github.com/surge-events/surge/tools/stack"
)

// The crash loop's shape. Each kill comes a random killMin..killMax after
// the previous start became ready, though not before every sink shard has
// resumed or resumeWithin has passed; but one comes only quickKillMin..
// quickKillMax after a restart, whatever the shards do, while the stack is
// still catching up.
const (
	crashClients = 4
	// Each request carries crashEventsMin..crashEventsMax events.
	crashEventsMin, crashEventsMax = 200, 400
	// crashPace is each client's pause between two requests: about 6,000
	// events/s in all while the stack is up, a burst of retries after.
	crashPace                  = 200 * time.Millisecond
	killMin, killMax           = 2 * time.Second, 8 * time.Second
	quickKillMin, quickKillMax = 500 * time.Millisecond, 2 * time.Second
	// resumeWithin is how soon after a restart is ready every shard with
	// pending work must insert again (issue 9: the old stall was a
	// minute, the sink's 65 s AckWait).
	resumeWithin = 5 * time.Second
	// restartReady bounds a restart, from start to ready.
	restartReady = time.Minute
	// goneWithin bounds how long the killed processes take to go.
	goneWithin = 30 * time.Second
)

// TestCrashLoop runs the stack as users run it, `surge up` (embedded NATS,
// the four services and the clickhouse-server children), under HTTP load,
// SIGKILLs all of it and restarts it in the same data folder each time.
// Three kills in four come at an exact point of a schema change (the load
// brings new property keys): the stack runs with a failpoint armed, stops
// there, and is killed (crashPoints); the others at random moments. After every restart each sink shard that has work
// pending must insert again within resumeWithin; at the end every event
// that got a 202 must be in ClickHouse exactly once.
//
// Settings (environment):
//
//	SURGE_CRASHLOOP_CYCLES        kills (default 5; `go tool task chaos:crashloop` runs 20)
//	SURGE_CRASHLOOP_SEED          the schedule's seed (default: random, printed)
//	SURGE_CRASHLOOP_LOG           a file that keeps surge up's output (default: a temporary one)
//	SURGE_CRASHLOOP_PREFILL_ROWS  synthetic rows put in events_local once the first start is
//	                              ready, before the load (default 0; `go tool task
//	                              chaos:crashloop:billion` puts 1,000,000,000: prefill)
//
// The exactly-once checks count the test's own rows only (ownRows), so a
// prefilled table passes them as an empty one does.
func TestCrashLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("crash-loop test skipped in -short mode")
	}
	if _, err := os.Stat(chserver.Binary); err != nil {
		t.Fatalf("clickhouse-server not installed (%v); run `go run ./tools/cmd/surge setup`", err)
	}
	cycles, seed := crashLoopSettings(t)
	prefilled := prefillRows(t)
	t.Logf("crashloop: seed %d (replay with SURGE_CRASHLOOP_SEED=%d), %d kills", seed, seed, cycles)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	started := time.Now()

	becomeSubreaper(t)
	tmp := t.TempDir()
	free, err := ports.Free(1)
	require.NoError(t, err)
	up := &surgeUp{
		bin: surgebin.Build(t), dir: filepath.Join(tmp, "data"), logPath: filepath.Join(tmp, "surge.log"),
		httpAddr: "127.0.0.1:" + strconv.Itoa(free[0]),
	}
	if p := os.Getenv("SURGE_CRASHLOOP_LOG"); p != "" {
		up.logPath = p
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- surge up output (last lines) ----\n%s", testkitproc.Tail(up.logPath, 60))
		}
		if _, err := up.kill(goneWithin); err != nil {
			t.Errorf("stop surge up: %v", err)
		}
	})
	require.NoError(t, up.start(crashPoint(1, cycles)))
	info, ready, err := up.waitReady(t.Context(), 2*time.Minute)
	require.NoError(t, err)
	require.False(t, ready.IsZero(), "surge up stopped at its failpoint before it was ready the first time")
	t.Logf("crashloop: surge up ready in %s", time.Since(started).Round(time.Millisecond))
	// A big table under the sink's start-up reads: every restart after the
	// first kill finds it. The first stack, armed at a failpoint of a
	// schema change, does not stop: no event comes before the load.
	if prefilled > 0 {
		prefill(t, info, up.dir, prefilled)
	}
	// The audit persists in the servers' data folders across the kills.
	installAudit(t, info.HTTP)

	// The load runs across every kill: issue ends new requests, abort
	// (the test's end) ends the requests in flight too.
	l := &crashLoad{load: newLoad("http://"+up.httpAddr+"/v1/events", settings{}, rng.Uint64())}
	loadStart := time.Now()
	stopIssuing, loadDone := startLoad(t, l.run)
	since := func(tm time.Time) float64 { return tm.Sub(loadStart).Seconds() }

	// The quick kill is one of the random kills after the first, when
	// there are two of them at least.
	var randomKills []int
	for n := 2; n <= cycles; n++ {
		if crashPoint(n, cycles) == "" {
			randomKills = append(randomKills, n)
		}
	}
	quick := 0
	if len(randomKills) > 1 {
		quick = randomKills[rng.IntN(len(randomKills))]
	}
	var restarts []restartReport
	for n := 1; n <= cycles; n++ {
		point := crashPoint(n, cycles) // armed in the stack running now
		delay := killMin + randDuration(rng, killMax-killMin)
		if n == quick {
			delay = quickKillMin + randDuration(rng, quickKillMax-quickKillMin)
		}
		killAt := ready.Add(delay)
		if n > 1 && point == "" {
			// Only the quick kill may cut the watch short: the others wait
			// for it, so every shard's resume is judged. A stack armed at a
			// failpoint may stop any time: its resume is not judged.
			watchUntil := ready.Add(resumeWithin)
			if n == quick {
				watchUntil = killAt
			}
			shards, err := watchResume(t.Context(), info, ready, watchUntil)
			require.NoError(t, err, "restart %d", n-1)
			restarts = append(restarts, restartReport{n: n - 1, ready: since(ready), shards: shards})
		}
		if point == "" {
			require.NoError(t, sleep(t.Context(), time.Until(killAt)))
		} else {
			require.NoError(t, up.waitStopped(t.Context(), failpointWithin), "kill %d", n)
		}
		killed := time.Now()
		groups, err := up.kill(goneWithin)
		require.NoError(t, err, "kill %d", n)
		kind := ""
		switch {
		case n == quick:
			kind = " (the quick one)"
		case point != "":
			kind = " (stopped at " + point + ")"
		}
		after := "before it was ready"
		if !ready.IsZero() {
			after = fmt.Sprintf("%.2fs after the stack was ready", killed.Sub(ready).Seconds())
		}
		t.Logf("crashloop: kill %d%s at %7.2fs, %s: %d process groups gone in %s (%d events accepted so far)",
			n, kind, since(killed), after, groups, time.Since(killed).Round(time.Millisecond), l.acceptedEvents())

		pause := randDuration(rng, time.Second)
		require.NoError(t, sleep(t.Context(), pause))
		next := crashPoint(n+1, cycles)
		require.NoError(t, up.start(next))
		info, ready, err = up.waitReady(t.Context(), restartReady)
		require.NoError(t, err, "restart %d", n)
		if ready.IsZero() {
			t.Logf("crashloop: restart %d stopped at %s before it was ready", n, next)
			continue
		}
		t.Logf("crashloop: restart %d ready at %7.2fs, %s after the kill (restarted after a %s pause)",
			n, since(ready), ready.Sub(killed).Round(time.Millisecond), pause.Round(time.Millisecond))
	}
	shards, err := watchResume(t.Context(), info, ready, ready.Add(resumeWithin))
	require.NoError(t, err, "restart %d", cycles)
	restarts = append(restarts, restartReport{n: cycles, ready: since(ready), shards: shards})

	stopIssuing()
	select {
	case <-loadDone:
	case <-time.After(retryFor + 30*time.Second):
		t.Fatal("crashloop: the requests in flight did not end")
	}
	t.Logf("crashloop: load done in %s: %d requests accepted, %d events accepted, %d retries, statuses %v",
		time.Since(loadStart).Round(time.Millisecond), l.acceptedRequests.Load(), l.acceptedEvents(), l.retries.Load(), l.statuses())
	require.Empty(t, l.failures(), "requests that never got a 202 or got an unexpected answer")

	maxResume := checkResumes(t, restarts)

	// Drain: every accepted event in ClickHouse, nothing left in INGEST or BATCHES.
	nc, js, err := connectJS(info)
	require.NoError(t, err)
	defer nc.Close()
	want := uint64(len(l.accepted))
	drainStart := time.Now()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		uniq, _ := chTotals(info.HTTP, ownRows)
		assert.GreaterOrEqual(c, uniq, want, "distinct events in ClickHouse")
		for _, name := range []string{streams.Ingest, streams.Batches} {
			n, err := streamMsgs(t.Context(), js, name)
			if assert.NoError(c, err) {
				assert.Zero(c, n, "messages in %s", name)
			}
		}
	}, 2*time.Minute, 200*time.Millisecond, "pipeline did not drain")
	uniq, total := chTotals(info.HTTP, ownRows)
	t.Logf("crashloop: drained in %s (clickhouse uniq=%d count=%d want=%d)", time.Since(drainStart).Round(time.Millisecond), uniq, total, want)

	checkExactlyOnce(t, info.HTTP, ownRows, l.accepted, nil)
	// Every kill SIGKILLs the ClickHouse servers too. The audit went in
	// after the prefill: it holds the test's inserts only.
	checkInsertedOnce(t, info.HTTP, l.accepted, true)
	// A kill between a work-queue ack and its removal can leave acked
	// messages in INGEST: the partitioner removes them at start (the drain
	// above saw INGEST empty), and status reads the backlog from the
	// consumers, so a drained stack is healthy.
	args := []string{"status", "--dir", up.dir}
	if prefilled > 0 {
		// Its per-shard rows and watermark read the whole table: more
		// than its 5 s default bound on a billion rows.
		args = append(args, "--timeout", "5m")
	}
	out, err := exec.CommandContext(t.Context(), up.bin, args...).CombinedOutput()
	require.NoError(t, err, "surge status after the crash loop:\n%s", out)
	dead, err := streamMsgs(t.Context(), js, streams.DeadLetter)
	require.NoError(t, err)
	require.Zero(t, dead, "dead letters")
	// The kills came at any point of the schema changes the load kept
	// making (between a proposal and its ALTER, between an ALTER and its
	// insert's ack): every agreed column is there, values in place.
	checkAgreedColumns(t, js, [][]string{info.HTTP})
	if prefilled > 0 {
		logPresenceReads(t, info.HTTP)
	}
	t.Logf("crashloop: seed %d passed in %s: %d kills, %d events exactly once, slowest shard resumed %.2fs after ready (%d rows prefilled)",
		seed, time.Since(started).Round(time.Second), cycles, want, maxResume.Seconds(), prefilled)
}

// crashPoints are the exact points of a schema change the crash loop
// stops the stack at (failpoint), in turn, to kill it there: after the
// schema change is written and before its ALTER, after the ALTER and
// before the insert, after the insert and before the ack. Every fourth
// kill comes at a random moment instead.
var crashPoints = []string{failpoint.BatcherSchemaWritten, failpoint.SinkColumnAdded, failpoint.SinkInsertedNewColumn}

// failpointWithin bounds the wait for an armed stack to reach its point:
// the load brings a new property key every newKeyEvery requests, a few a
// second.
const failpointWithin = time.Minute

// crashPoint is the failpoint armed for kill n of cycles, "" for a kill at
// a random moment (and after the last kill: the stack then runs to the
// end unarmed).
func crashPoint(n, cycles int) string {
	if n < 1 || n > cycles || n%4 == 0 {
		return ""
	}
	return crashPoints[(n-1-(n-1)/4)%len(crashPoints)]
}

// randDuration is a random duration in [0, d).
func randDuration(rng *rand.Rand, d time.Duration) time.Duration {
	return time.Duration(rng.Int64N(int64(d)))
}

func crashLoopSettings(t *testing.T) (cycles int, seed uint64) {
	t.Helper()
	cycles, seed = 5, rand.Uint64()
	if v := os.Getenv("SURGE_CRASHLOOP_CYCLES"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "SURGE_CRASHLOOP_CYCLES")
		require.Positive(t, n, "SURGE_CRASHLOOP_CYCLES")
		cycles = n
	}
	if v := os.Getenv("SURGE_CRASHLOOP_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "SURGE_CRASHLOOP_SEED")
		seed = s
	}
	return cycles, seed
}

// restartReport is what the sink's shards did after one (re)start.
type restartReport struct {
	n      int
	ready  float64 // seconds since the load started
	shards []shardResume
}

// shardResume is one sink shard after a restart.
type shardResume struct {
	shard int
	// The shard's work pending when the stack was ready: batches waiting
	// or unacked in its BATCHES consumer, messages in EVENTS the batcher
	// has not read, and requests in INGEST (every shard's).
	batches, events, ingest uint64
	// resumed says the shard handled a batch (inserted, duplicate or dead
	// letter: its surge_sink_batches_total rose from 0) after's time after
	// the stack was ready; 0 when it had before.
	resumed bool
	after   time.Duration
	// cut says the next kill came before the shard resumed and before
	// resumeWithin had passed: nothing can be said.
	cut bool
}

// pending says the shard had work to do when the stack was ready.
func (s shardResume) pending() bool { return s.batches+s.events+s.ingest > 0 }

// checkResumes asserts that after every restart every shard with pending
// work resumed within resumeWithin, prints each shard's resume time, and
// returns the slowest.
func checkResumes(t *testing.T, restarts []restartReport) time.Duration {
	t.Helper()
	var slowest time.Duration
	for _, r := range restarts {
		var line []string
		for _, s := range r.shards {
			resumed := "-"
			switch {
			case s.resumed:
				resumed = fmt.Sprintf("%.2fs", s.after.Seconds())
			case s.cut:
				resumed = "cut"
			}
			line = append(line, fmt.Sprintf("%d:%s(%d/%d/%d)", s.shard, resumed, s.batches, s.events, s.ingest))
			if !s.pending() || s.cut {
				continue
			}
			if assert.True(t, s.resumed, "restart %d: shard %d had work pending at ready (%d batches, %d EVENTS messages, %d INGEST requests) and handled no batch within %s",
				r.n, s.shard, s.batches, s.events, s.ingest, resumeWithin) {
				slowest = max(slowest, s.after)
			}
		}
		t.Logf("crashloop: restart %d (ready at %7.2fs) shard:resumed after ready(pending batches/events/ingest requests at ready): %s", r.n, r.ready, strings.Join(line, " "))
	}
	return slowest
}

// watchResume notes each sink shard's pending work at ready, then polls the
// sink's surge_sink_batches_total until every shard has handled a batch,
// resumeWithin has passed since ready, or until. Only the shards with
// pending work must have resumed (checkResumes); the others are shown.
func watchResume(ctx context.Context, info stack.Info, ready, until time.Time) ([]shardResume, error) {
	nc, js, err := connectJS(info)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	out, err := pendingWork(ctx, js)
	if err != nil {
		return nil, err
	}
	addr := info.Admin["sink"]
	if addr == "" {
		return nil, fmt.Errorf("%s has no sink admin address: %v", stack.InfoFile, info.Admin)
	}
	deadline := ready.Add(resumeWithin)
	for {
		handled, err := sinkBatches(ctx, addr)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		waiting := false
		for k := range out {
			if !out[k].resumed && handled[k] > 0 {
				out[k].resumed, out[k].after = true, max(0, now.Sub(ready))
			}
			waiting = waiting || !out[k].resumed
		}
		if !waiting || now.After(deadline) {
			return out, nil
		}
		if !now.Before(until) {
			for k := range out {
				out[k].cut = !out[k].resumed
			}
			return out, nil
		}
		if err := sleep(ctx, 25*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// pendingWork reads each shard's pending work from JetStream.
func pendingWork(ctx context.Context, js jetstream.JetStream) ([]shardResume, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// INGEST's backlog is its consumers', not its message count: a kill
	// can leave messages the partitioner has acked. There is one consumer
	// per tenant with work; a ready partitioner has made every one.
	st, err := js.Stream(ctx, streams.Ingest)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", streams.Ingest, err)
	}
	var ingest uint64
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		if strings.HasPrefix(ci.Name, partitioner.ConsumerPrefix) {
			ingest += ci.NumPending + uint64(max(ci.NumAckPending, 0))
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("consumers of %s: %w", streams.Ingest, err)
	}
	unread, err := eventsUnread(ctx, js)
	if err != nil {
		return nil, err
	}
	out := make([]shardResume, shards)
	for k := range out {
		cons, err := js.Consumer(ctx, streams.Batches, sink.ConsumerName(k))
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", sink.ConsumerName(k), err)
		}
		ci := cons.CachedInfo()
		out[k] = shardResume{
			shard: k, batches: ci.NumPending + uint64(ci.NumAckPending),
			events: unread[streams.EventsSubject(k)], ingest: ingest,
		}
	}
	return out, nil
}

// eventsUnread is, per EVENTS subject, the messages the batcher has not
// read. It reads each shard with an ordered consumer that a restart
// replaces; the one a killed batcher left lingers until its inactivity
// threshold and counts everything since, so the smallest pending count of
// the consumers on a subject is the batcher's (as stack.BacklogOf does).
func eventsUnread(ctx context.Context, js jetstream.JetStream) (map[string]uint64, error) {
	stream, err := js.Stream(ctx, streams.Events)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", streams.Events, err)
	}
	least := map[string]uint64{}
	list := stream.ListConsumers(ctx)
	for ci := range list.Info() {
		subjects := ci.Config.FilterSubjects
		if ci.Config.FilterSubject != "" {
			subjects = append(subjects, ci.Config.FilterSubject)
		}
		for _, subj := range subjects {
			if n, ok := least[subj]; !ok || ci.NumPending < n {
				least[subj] = ci.NumPending
			}
		}
	}
	if err := list.Err(); err != nil {
		return nil, fmt.Errorf("consumers of %s: %w", streams.Events, err)
	}
	return least, nil
}

var sinkBatchesLine = regexp.MustCompile(`^surge_sink_batches_total\{.*shard="(\d+)".*\} (\S+)$`)

// sinkBatches reads surge_sink_batches_total per shard, every outcome
// summed, from the sink's /metrics at addr.
func sinkBatches(ctx context.Context, addr string) (map[int]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sink metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("sink metrics: %s", resp.Status)
	}
	out := map[int]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		m := sinkBatchesLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		k, err := strconv.Atoi(m[1])
		if err != nil {
			return nil, fmt.Errorf("sink metrics: %q: %w", sc.Text(), err)
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, fmt.Errorf("sink metrics: %q: %w", sc.Text(), err)
		}
		out[k] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("sink metrics: %w", err)
	}
	return out, nil
}

func connectJS(info stack.Info) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(info.NATSURL, nats.UserInfo(info.NATSUser, info.NATSPassword), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, nil, fmt.Errorf("connect %s: %w", info.NATSURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// streamMsgs is the number of messages in the named stream.
func streamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", name, err)
	}
	return s.CachedInfo().State.Msgs, nil
}

// crashLoad is the clients' side: crashClients clients, each sending one
// request after another with unique event ids until the test stops it,
// each request until a 202 (with its Idempotency-Key), across the kills.
type crashLoad struct {
	*load
	next atomic.Int64
}

// run sends until issue ends, then returns once the requests in flight
// have ended; abort ends those too.
func (l *crashLoad) run(issue, abort context.Context) {
	var wg sync.WaitGroup
	for w := range crashClients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(l.seed, uint64(w)))
			for issue.Err() == nil {
				l.send(abort, int(l.next.Add(1)), rng)
				if sleep(issue, crashPace) != nil {
					return
				}
			}
		})
	}
	wg.Wait()
}

// send posts request r until a 202, a refusal, retryFor, or ctx's end.
func (l *crashLoad) send(ctx context.Context, r int, rng *rand.Rand) {
	body, ids := eventsBody("cl", "crashloop", r, crashEventsMin+rng.IntN(crashEventsMax-crashEventsMin+1), rng)
	key := "crashloop-" + strconv.Itoa(r)
	// While the stack is down every attempt fails at once: back off.
	l.untilAccepted(ctx, r, ids, func(int) string { return l.post(ctx, body, key) },
		func(attempt int) time.Duration {
			return min(time.Duration(attempt)*50*time.Millisecond, 500*time.Millisecond)
		})
}

func (l *crashLoad) acceptedEvents() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

// surgeUp is one `surge up` process at a time on one data folder. It runs
// in its own process group; its clickhouse-server children lead groups of
// their own (chserver starts them so, so that a Ctrl-C reaches surge up
// alone, which stops them in order).
type surgeUp struct {
	bin, dir, logPath, httpAddr string

	// p is the running surge up, nil once killed.
	p *testkitproc.Process
}

// start runs surge up on the data folder, with point armed (failpoint.Env)
// unless it is "".
func (s *surgeUp) start(point string) error {
	// A stack.json left behind by a killed stack names ports nobody
	// listens on any more: remove it, so the next one found is new.
	if err := stack.RemoveInfo(s.dir); err != nil {
		return err
	}
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "\n===== start surge up at %s =====\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(s.bin, "up", "--dir", s.dir, "--shards", strconv.Itoa(shards), "--clickhouse-servers", "2",
		"--http", s.httpAddr, "--nats-port", "-1", "--mqtt-port", "0", "--log-level", "info")
	cmd.Env = os.Environ()
	if point != "" {
		fmt.Fprintf(f, "===== armed: %s=%s =====\n", failpoint.Env, point)
		cmd.Env = append(cmd.Env, failpoint.Env+"="+point)
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Its own process group, killed as one; and killed if the test dies.
	p, err := testkitproc.Start(cmd, s.logPath)
	if err != nil {
		return fmt.Errorf("start surge up: %w", err)
	}
	s.p = p
	return nil
}

// waitReady waits until the stack has written its stack.json (surge up
// writes it once every service is ready) and ingest's /readyz answers
// 200, for at most timeout, and returns the Info and when it was seen.
// A stack stopped at its armed failpoint before it was ready returns a
// zero time and no error.
func (s *surgeUp) waitReady(ctx context.Context, timeout time.Duration) (stack.Info, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := errors.New("no " + stack.InfoFile + " yet")
	for {
		select {
		case <-s.p.Exited():
			return stack.Info{}, time.Time{}, fmt.Errorf("surge up exited before it was ready: %s\n%s", s.p.ExitState(), testkitproc.Tail(s.logPath, 30))
		default:
		}
		if stopped, err := s.stopped(); err != nil || stopped {
			return stack.Info{}, time.Time{}, err
		}
		info, err := stack.ReadInfo(s.dir)
		if err == nil {
			if err = readyz(ctx, info.Admin["ingest"]); err == nil {
				return info, time.Now(), nil
			}
		}
		last = err
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return stack.Info{}, time.Time{}, fmt.Errorf("surge up not ready within %s (last: %v)", timeout, last)
		}
	}
}

func readyz(ctx context.Context, addr string) error {
	if addr == "" {
		return errors.New("no ingest admin address")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ingest /readyz: %s", resp.Status)
	}
	return nil
}

// stopped says whether surge up is stopped (state T in /proc), as an
// armed failpoint leaves it.
func (s *surgeUp) stopped() (bool, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.p.PID()))
	if err != nil {
		return false, fmt.Errorf("state of surge up: %w", err)
	}
	// pid (comm) state ...: comm may hold spaces, the state follows its ')'.
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false, fmt.Errorf("state of surge up: %q", stat)
	}
	return stat[i+2] == 'T', nil
}

// waitStopped waits, for at most timeout, until surge up stops at its
// armed failpoint.
func (s *surgeUp) waitStopped(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		select {
		case <-s.p.Exited():
			return fmt.Errorf("surge up exited instead of stopping at its failpoint: %s\n%s", s.p.ExitState(), testkitproc.Tail(s.logPath, 30))
		default:
		}
		stopped, err := s.stopped()
		if err != nil || stopped {
			return err
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("surge up did not reach its failpoint within %s", timeout)
		}
	}
}

// kill SIGKILLs surge up's process group and the group of each of its
// descendants at once, and returns the number of groups once every
// process of them is gone (kill(-pgid, 0) fails with ESRCH), for at most
// timeout. It does nothing when surge up is not running.
func (s *surgeUp) kill(timeout time.Duration) (int, error) {
	if s.p == nil {
		return 0, nil
	}
	pid := s.p.PID()
	desc, err := descendants(pid)
	if err != nil {
		return 0, err
	}
	groups := []int{pid} // surge up leads its group (Setpgid)
	for _, d := range desc {
		if !slices.Contains(groups, d.pgid) {
			groups = append(groups, d.pgid)
		}
	}
	for _, g := range groups {
		if err := syscall.Kill(-g, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return 0, fmt.Errorf("kill process group %d: %w", g, err)
		}
	}
	deadline := time.Now().Add(timeout)
	poll := time.NewTicker(5 * time.Millisecond) // the kernel says nothing when a group empties: poll it
	defer poll.Stop()
	for {
		// The children of the killed surge up are now this process's
		// (becomeSubreaper): reap them, or they stay as zombies.
		for _, d := range desc {
			_, _ = syscall.Wait4(d.pid, nil, syscall.WNOHANG, nil)
		}
		var alive []int
		for _, g := range groups {
			if err := syscall.Kill(-g, 0); !errors.Is(err, syscall.ESRCH) {
				alive = append(alive, g)
			}
		}
		if len(alive) == 0 {
			// surge up itself has been reaped (its group is empty): its
			// waiter is closing its log.
			select {
			case <-s.p.Exited():
			case <-time.After(time.Until(deadline)):
				return 0, fmt.Errorf("surge up (pid %d) gone but not waited for within %s", pid, timeout)
			}
			s.p = nil
			return len(groups), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("process groups %v still alive %s after SIGKILL", alive, timeout)
		}
		<-poll.C
	}
}

// procInfo is a process as /proc shows it.
type procInfo struct{ pid, pgid int }

// descendants lists every descendant of pid, read from /proc.
func descendants(pid int) ([]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := map[int][]procInfo{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		// "pid (comm) state ppid pgrp ...": the fields follow the last ')'.
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) < 3 {
			continue
		}
		ppid, err1 := strconv.Atoi(f[1])
		pgid, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		children[ppid] = append(children[ppid], procInfo{pid: p, pgid: pgid})
	}
	var out []procInfo
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out, nil
}

// becomeSubreaper makes this process the reaper of orphaned descendants
// for the test: the clickhouse-server children of a killed surge up then
// become its children, which kill reaps at once, rather than zombies of
// whatever runs as init (which may never reap them).
func becomeSubreaper(t *testing.T) {
	t.Helper()
	const prSetChildSubreaper = 36
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
	t.Cleanup(func() { _, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 0, 0) })
}
