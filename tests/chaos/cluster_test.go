package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natscluster"
	"github.com/surge-events/surge/pkg/testkit/ports"
	testkitproc "github.com/surge-events/surge/pkg/testkit/proc"
	"github.com/surge-events/surge/tools/stack"
	"github.com/surge-events/surge/tools/status"
)

// The cluster faults. Every run has each of them at least once.
const (
	cfKillIngestLeader  = "SIGKILL the INGEST leader node"
	cfKillBatchesLeader = "SIGKILL the BATCHES leader node"
	cfKillIngest        = "SIGKILL an ingest"
	cfKillPartitioner   = "SIGKILL a partitioner"
	cfKillBatcher       = "SIGKILL a batcher"
	cfKillSink          = "SIGKILL a sink"
	cfKillReplica       = "SIGKILL a ClickHouse replica"
	cfStopForGood       = "SIGTERM a batcher or sink for good"
	cfAddInstance       = "add a batcher or sink"
	cfFreeze            = "SIGSTOP a batcher or sink past its leases"
	cfKillLeasesLeader  = "SIGKILL the lease bucket's leader node"
)

var clusterFaults = []string{
	cfKillIngestLeader, cfKillBatchesLeader, cfKillIngest, cfKillPartitioner,
	cfKillBatcher, cfKillSink, cfKillReplica, cfStopForGood, cfAddInstance, cfFreeze,
	cfKillLeasesLeader,
}

// Bounds of the cluster chaos test, beside the lease-derived takeover
// bound (takeoverBound).
const (
	// electionBound bounds a stream's new leader after its leader node
	// was SIGKILLed (measured 4-7 s).
	electionBound = 20 * time.Second
	// landingBound bounds how soon rows land on a shard again after one
	// of its replicas was SIGKILLed; landingAfterRestart how soon after
	// that replica is back, for a shard whose batch may be on it alone
	// (the sink's presence read waits for it, retrying at most 5 s apart).
	landingBound        = 45 * time.Second
	landingAfterRestart = 20 * time.Second
	// restartBound bounds a restarted process's way to ready.
	restartBound = time.Minute
	// clusterRate is the load in events/s, over both ingest instances.
	clusterRate = 2000
)

// clusterSettings are the knobs of one cluster chaos run.
type clusterSettings struct {
	seed   uint64
	faults int // at least len(clusterFaults)
	events int // the load goes on until the faults are done and this many were sent
	// plan, when set, is the faults in their order instead of a seeded one.
	plan []string
}

func loadClusterSettings(t *testing.T) clusterSettings {
	t.Helper()
	s := clusterSettings{seed: rand.Uint64(), faults: len(clusterFaults), events: 100_000}
	if v := os.Getenv("SURGE_CLUSTER_CHAOS_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "SURGE_CLUSTER_CHAOS_SEED")
		s.seed = seed
	}
	if v := os.Getenv("SURGE_CLUSTER_CHAOS_FAULTS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "SURGE_CLUSTER_CHAOS_FAULTS")
		s.faults = max(n, len(clusterFaults))
	}
	if v := os.Getenv("SURGE_CLUSTER_CHAOS_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "SURGE_CLUSTER_CHAOS_EVENTS")
		s.events = n
	}
	if v := os.Getenv("SURGE_CLUSTER_CHAOS_PLAN"); v != "" {
		for _, f := range strings.Split(v, ",") {
			f = strings.TrimSpace(f)
			require.Contains(t, clusterFaults, f, "SURGE_CLUSTER_CHAOS_PLAN")
			s.plan = append(s.plan, f)
		}
	}
	return s
}

// clusterPlan is the faults in a seeded order: each kind once, then
// kinds drawn at random up to n.
func clusterPlan(rng *rand.Rand, n int) []string {
	kinds := slices.Clone(clusterFaults)
	for len(kinds) < n {
		kinds = append(kinds, clusterFaults[rng.IntN(len(clusterFaults))])
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	return kinds
}

// TestClusterChaos runs the local cluster of `surge up --cluster` (3 NATS
// nodes with streams at R3, ZooKeeper, 2 ClickHouse shards of 2 replicas,
// two processes of each service, batchers and sinks sharing the shards by
// leases) under HTTP load on both ingest instances, and breaks it in a
// seeded order: the INGEST, the BATCHES and the lease bucket's leader
// nodes SIGKILLed and restarted; one instance of each service SIGKILLed
// and restarted; a ClickHouse replica SIGKILLed and restarted; a batcher
// or sink stopped for good and one added; a batcher or sink paused
// (SIGSTOP) until its shards moved, then resumed. One fault at a time,
// each measured until the cluster recovered from it. Then: every event
// that got a 202 is on both replicas of its shard exactly once; no shard
// of the batchers or sinks ever ran in two processes at once, nor had a
// batch published or inserted by a process while another ran it, nor
// more than the one output on its way by a paused owner after it resumed
// (from the services' logs); and each shard of a killed, stopped or
// paused batcher or sink moved to another owner within takeoverBound
// (from the lease bucket).
//
// Settings (environment):
//
//	SURGE_CLUSTER_CHAOS_SEED    the order's seed (default: random, printed)
//	SURGE_CLUSTER_CHAOS_FAULTS  faults in all (default 11, each kind once; `go tool task chaos:cluster:long` runs 30)
//	SURGE_CLUSTER_CHAOS_EVENTS  events sent at least (default 100,000 at 2,000/s; the load lasts as long as the faults)
//	SURGE_CLUSTER_CHAOS_PLAN    the faults to run, by name, comma-separated, in order (default: the seeded order)
func TestClusterChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster chaos test skipped in -short mode")
	}
	if _, err := os.Stat(chserver.Binary); err != nil {
		t.Fatalf("clickhouse-server not installed (%v); run `go run ./tools/cmd/surge setup`", err)
	}
	if _, err := natscluster.Binary(); err != nil {
		t.Fatal(err)
	}
	a := failuresAtEnd(t)
	cfg := loadClusterSettings(t)
	t.Logf("cluster chaos: seed %d (replay with SURGE_CLUSTER_CHAOS_SEED=%d), %d faults, at least %d events",
		cfg.seed, cfg.seed, cfg.faults, cfg.events)
	rng := rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15))
	plan := clusterPlan(rng, cfg.faults)
	if cfg.plan != nil {
		plan = cfg.plan
	}
	t.Logf("cluster chaos: order %s", strings.Join(plan, ", "))
	started := time.Now()

	free, err := ports.Free(2)
	require.NoError(t, err)
	wd, err := os.Getwd()
	require.NoError(t, err)
	debug := map[string]string{"SURGE_LOG_LEVEL": "debug"}
	dir := keptOnFailure(t, "surge-cluster-chaos-")
	c, err := stack.StartCluster(t.Context(), stack.ClusterOptions{
		Dir:         dir,
		Shards:      shards,
		IngestAddrs: [2]string{"127.0.0.1:" + strconv.Itoa(free[0]), "127.0.0.1:" + strconv.Itoa(free[1])},
		SourceDir:   wd,
		LogLevel:    "info",
		// The ownership check reads the batchers' and sinks' outputs.
		ServiceEnv: map[string]map[string]string{"batcher": debug, "sink": debug},
		Logf:       func(format string, args ...any) { t.Logf("cluster chaos: "+format, args...) },
	})
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop the cluster: %v", err)
		}
	})
	t.Logf("cluster chaos: cluster up in %s", time.Since(started).Round(time.Millisecond))
	var chServers []string // every replica of every shard
	for _, srv := range c.ClickHouse.Servers {
		chServers = append(chServers, srv.HTTPAddr())
	}
	installAudit(t, chServers)

	nc, err := c.Connect("cluster-chaos")
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	watch, err := watchLeases(t.Context(), js)
	require.NoError(t, err)
	t.Cleanup(watch.stop)
	t.Logf("cluster chaos: lease TTL %s, takeover bound %s", watch.ttl, takeoverBound(watch.ttl))

	ch := &chaosCluster{c: c, js: js, leases: watch, rng: rng, ends: map[string][]runEnd{}, frozen: map[string][]pause{}, logf: t.Logf}
	// The shards spread over both instances of each leased service.
	spread := time.Now()
	require.NoError(t, poll(t.Context(), takeoverBound(watch.ttl), func() error {
		for _, service := range []string{"batcher", "sink"} {
			for _, in := range ch.liveInstances(service) {
				id, err := leaseInstance(in.LogPath)
				if err != nil {
					return err
				}
				if n := len(watch.ownedBy(service, id)); n != shards/2 {
					return fmt.Errorf("%s (%s) holds %d shards", in.Name, id, n)
				}
			}
		}
		return nil
	}), "the shards did not spread over the two instances of each service")
	t.Logf("cluster chaos: shards spread over both batchers and both sinks %s after ready", time.Since(spread).Round(time.Millisecond))
	l := newClusterLoad([]string{c.Instance("ingest-0").IngestURL, c.Instance("ingest-1").IngestURL}, rng.Uint64())
	ch.start = time.Now()
	stopIssuing, loadDone := startLoad(t, l.run)

	reports, runErr := ch.run(t.Context(), plan)
	// The load goes on until it sent cfg.events.
	for l.sent.Load() < int64(cfg.events) && runErr == nil {
		if err := sleep(t.Context(), 100*time.Millisecond); err != nil {
			runErr = err
		}
	}
	stopIssuing()
	<-loadDone
	loadTook := time.Since(ch.start)
	ch.printReports(t, reports, l)
	if runErr != nil {
		ch.dumpLogs(t)
		t.Fatalf("cluster chaos: %v", runErr)
	}
	accepted := l.acceptedIDs()
	t.Logf("cluster chaos: load done in %s: %d events accepted in %d requests, %d retries, statuses %v",
		loadTook.Round(time.Millisecond), len(accepted), l.acceptedRequests.Load(), l.retries.Load(), l.statuses())
	require.Empty(t, l.failures(), "requests that never got a 202 or got an unexpected answer")

	// Drain: every accepted event on both replicas, nothing left in
	// INGEST or BATCHES.
	drainStart := time.Now()
	replicaSets := [][]string{{}, {}} // per replica index, the shard servers in shard order
	for s := range c.ClickHouse.Shards {
		for r, srv := range c.ClickHouse.Shards[s] {
			replicaSets[r] = append(replicaSets[r], srv.HTTPAddr())
		}
	}
	want := uint64(len(accepted))
	if !assert.EventuallyWithT(t, func(col *assert.CollectT) {
		for r, servers := range replicaSets {
			uniq, _ := chTotals(servers, allRows)
			assert.Equal(col, want, uniq, "distinct events on replica %d of the shards", r)
		}
		for _, s := range []string{streams.Ingest, streams.Batches} {
			n, err := streamMsgs(t.Context(), js, s)
			assert.NoError(col, err)
			assert.Zero(col, n, "messages in %s", s)
		}
	}, 4*time.Minute, time.Second, "the cluster did not drain") {
		ch.dumpLogs(t)
		t.FailNow()
	}
	t.Logf("cluster chaos: drained in %s", time.Since(drainStart).Round(time.Millisecond))

	// Exactly once on each replica of each shard: the same ids on both.
	for r, servers := range replicaSets {
		t.Logf("cluster chaos: checking replica %d of each shard (%s)", r, strings.Join(servers, ", "))
		checkExactlyOnce(t, servers, allRows, accepted, nil)
	}
	checkInsertedOnce(t, chServers, accepted, slices.Contains(plan, cfKillReplica))
	dead, err := streamMsgs(t.Context(), js, streams.DeadLetter)
	require.NoError(t, err)
	require.Zero(t, dead, "dead letters")
	checkAgreedColumns(t, js, replicaSets)

	// One owner at a time, from the batchers' and sinks' logs.
	spans := ch.spans(t)
	var outputs int
	for _, s := range spans {
		outputs += len(s.outputs)
	}
	t.Logf("cluster chaos: %d shard runs and %d batch outputs of the batchers and sinks read from their logs", len(spans), outputs)
	require.NotZero(t, outputs, "no batch output found in the logs: is their debug level on?")
	require.Empty(t, overlaps(spans), "a shard with two owners at once (runs ended %v, paused %v)", ch.ends, ch.frozen)
	// A paused owner that resumed after losing its shards may finish the
	// one output it had on its way (fenced downstream), no more.
	for _, s := range spans {
		if len(s.late) > 0 {
			t.Logf("cluster chaos: %s shard %d: %d output(s) finished after a pause that lost the shard", s.proc, s.shard, len(s.late))
		}
		require.LessOrEqual(t, len(s.late), 1, "%s shard %d: outputs %v after its pause lost the shard", s.proc, s.shard, s.late)
	}

	// Each shard of a killed batcher or sink moved within the bound.
	bound := takeoverBound(watch.ttl)
	for _, rep := range reports {
		for k, d := range rep.takeovers {
			assert.GreaterOrEqual(a, d, time.Duration(0), "%s %s: shard %d never moved", rep.kind, rep.target, k)
			assert.LessOrEqual(a, d, bound, "%s %s: shard %d moved after %s", rep.kind, rep.target, k, d)
		}
		for what, d := range rep.bounded {
			assert.LessOrEqual(a, d.took, d.bound, "%s %s: %s", rep.kind, rep.target, what)
			assert.GreaterOrEqual(a, d.took, time.Duration(0), "%s %s: %s never happened", rep.kind, rep.target, what)
		}
	}
	// surge status, after it all, sees a healthy cluster: each shard held
	// by a running instance, named by its admin name, every stream on
	// its three replicas, every instance ready.
	checkStatus(t, a, ch)
	verdict := "passed"
	if t.Failed() {
		verdict = "FAILED"
	}
	t.Logf("cluster chaos: seed %d %s in %s: %d events, %d faults", cfg.seed, verdict, time.Since(started).Round(time.Second), want, len(reports))
}

// checkStatus takes `surge status` looks at the cluster's running
// instances until one is healthy (leases spread again after the last
// fault meanwhile), and checks what it says of owners and replicas.
func checkStatus(t *testing.T, a assert.TestingT, ch *chaosCluster) {
	t.Helper()
	info := ch.c.Info()
	cfg := status.Config{NATSURL: info.NATSURL, NATSUser: info.NATSUser, NATSPassword: info.NATSPassword, Database: info.Database, Shards: shards}
	for _, replicas := range info.ClickHouseReplicas {
		cfg.ClickHouse = append(cfg.ClickHouse, strings.Join(replicas, "|"))
	}
	running := map[string]string{} // instance name -> service
	for _, in := range ch.c.Instances {
		if in.Running() {
			cfg.Admin = append(cfg.Admin, status.Endpoint{Name: in.Name, Service: in.Service, Addr: in.AdminAddr})
			running[in.Name] = in.Service
		}
	}
	col, err := status.New(cfg)
	require.NoError(t, err)
	defer func() { assert.NoError(a, col.Close()) }()
	var r *status.Report
	require.NoError(t, poll(t.Context(), takeoverBound(ch.leases.ttl), func() error {
		var err error
		if r, err = col.Collect(t.Context()); err != nil {
			return err
		}
		r.Judge(status.DefaultThresholds())
		if !r.Healthy {
			return fmt.Errorf("surge status: %v", r.Problems)
		}
		return nil
	}), "surge status never saw the cluster healthy")
	assert.Equal(a, map[string]string{"batcher": "lease", "sink": "lease"}, r.Ownership)
	require.Len(t, r.Shards, shards)
	for _, s := range r.Shards {
		assert.Equal(a, "batcher", running[s.BatcherOwner], "shard %d: batcher owner %q is a running batcher", s.Shard, s.BatcherOwner)
		assert.Equal(a, "sink", running[s.SinkOwner], "shard %d: sink owner %q is a running sink", s.Shard, s.SinkOwner)
		assert.Zero(a, s.Batches.Pending, "shard %d: batches waiting", s.Shard)
	}
	for _, st := range r.Streams {
		assert.Equal(a, 3, st.Replicas, "stream %s replicas", st.Name)
		assert.Equal(a, 3, st.Current, "stream %s replicas current", st.Name)
	}
	assert.Len(a, r.Instances, len(running))
	var b strings.Builder
	require.NoError(t, status.Render(&b, r))
	t.Logf("cluster chaos: surge status at the end:\n%s", b.String())
}

// takeoverBound bounds how long a SIGKILLed instance's shard waits for a
// new owner: its key expires at most a TTL after its last renewal, a
// contender's round comes at most a third of the TTL later, and the rest
// is slack for a loaded machine.
func takeoverBound(ttl time.Duration) time.Duration { return ttl + ttl/3 + 5*time.Second }

// chaosCluster performs the faults on a running cluster.
type chaosCluster struct {
	c      *stack.Cluster
	js     jetstream.JetStream
	leases *leaseWatch
	rng    *rand.Rand
	start  time.Time
	logf   func(format string, args ...any)
	// ends records how each instance's runs ended, by instance name.
	ends map[string][]runEnd
	// frozen records the pauses of each instance's runs, by name.
	frozen map[string][]pause
}

// faultReport is what one fault did and how long the cluster took.
type faultReport struct {
	at, took     time.Duration // since the load started; the fault's whole length
	kind, target string
	// takeovers: per shard of a killed or stopped batcher or sink, how
	// long until another instance held its lease (-1: never).
	takeovers map[int]time.Duration
	// bounded are the other measures, each with its bound.
	bounded map[string]measure
	notes   []string
}

type measure struct{ took, bound time.Duration }

func (ch *chaosCluster) since(t time.Time) time.Duration { return t.Sub(ch.start) }

// run performs the plan, one fault at a time after a random pause of 1-3
// s, each until the cluster recovered from it. It returns on the first
// fault that could not be carried out.
func (ch *chaosCluster) run(ctx context.Context, plan []string) ([]faultReport, error) {
	var out []faultReport
	for _, kind := range plan {
		if err := sleep(ctx, time.Second+randDuration(ch.rng, 2*time.Second)); err != nil {
			return out, err
		}
		rep := faultReport{at: ch.since(time.Now()), kind: kind, takeovers: map[int]time.Duration{}, bounded: map[string]measure{}}
		ch.logf("cluster chaos: %7.2fs fault: %s", rep.at.Seconds(), kind)
		var err error
		switch kind {
		case cfKillIngestLeader:
			err = ch.killLeader(ctx, &rep, streams.Ingest)
		case cfKillBatchesLeader:
			err = ch.killLeader(ctx, &rep, streams.Batches)
		case cfKillIngest:
			err = ch.killRestart(ctx, &rep, "ingest")
		case cfKillPartitioner:
			err = ch.killRestart(ctx, &rep, "partitioner")
		case cfKillBatcher:
			err = ch.killRestart(ctx, &rep, "batcher")
		case cfKillSink:
			err = ch.killRestart(ctx, &rep, "sink")
		case cfKillReplica:
			err = ch.killReplica(ctx, &rep)
		case cfStopForGood:
			err = ch.stopForGood(ctx, &rep)
		case cfAddInstance:
			err = ch.addInstance(ctx, &rep)
		case cfFreeze:
			err = ch.freeze(ctx, &rep)
		case cfKillLeasesLeader:
			err = ch.killLeasesLeader(ctx, &rep)
		}
		rep.took = ch.since(time.Now()) - rep.at
		out = append(out, rep)
		if err != nil {
			return out, fmt.Errorf("fault %q at %.2fs: %w", kind, rep.at.Seconds(), err)
		}
	}
	return out, nil
}

// spans reads every batcher's and sink's work spans from its log.
func (ch *chaosCluster) spans(t *testing.T) []workSpan {
	t.Helper()
	var out []workSpan
	for _, in := range ch.c.Instances {
		if in.Service != "batcher" && in.Service != "sink" {
			continue
		}
		ss, err := readSpans(in.Service, in.Name, in.LogPath, ch.ends[in.Name], ch.frozen[in.Name])
		require.NoError(t, err)
		out = append(out, ss...)
	}
	return out
}

// printReports logs the faults and their measures as a table, with the
// client errors seen after each.
func (ch *chaosCluster) printReports(t *testing.T, reports []faultReport, l *clusterLoad) {
	t.Helper()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "at\tfault\ttarget\ttook\tclient errors\tmeasures\tnotes")
	for i, rep := range reports {
		end := time.Duration(1<<62 - 1)
		if i+1 < len(reports) {
			end = reports[i+1].at
		}
		errs, last := l.errorsBetween(ch.start.Add(rep.at), ch.start.Add(end))
		clientErrs := "none"
		if errs > 0 {
			clientErrs = fmt.Sprintf("%d, for %.1fs", errs, last.Sub(ch.start.Add(rep.at)).Seconds())
		}
		var ms []string
		var ks []int
		for k := range rep.takeovers {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		for _, k := range ks {
			ms = append(ms, fmt.Sprintf("shard %d moved in %.1fs", k, rep.takeovers[k].Seconds()))
		}
		var names []string
		for what := range rep.bounded {
			names = append(names, what)
		}
		slices.Sort(names)
		for _, what := range names {
			m := rep.bounded[what]
			ms = append(ms, fmt.Sprintf("%s %.1fs (bound %s)", what, m.took.Seconds(), m.bound))
		}
		fmt.Fprintf(w, "%.1fs\t%s\t%s\t%.1fs\t%s\t%s\t%s\n", rep.at.Seconds(), rep.kind, rep.target, rep.took.Seconds(),
			clientErrs, strings.Join(ms, "; "), strings.Join(rep.notes, "; "))
	}
	_ = w.Flush()
	t.Logf("cluster chaos: faults (times since the load started)\n%s", b.String())
}

func (ch *chaosCluster) dumpLogs(t *testing.T) {
	t.Helper()
	for _, in := range ch.c.Instances {
		t.Logf("---- %s log (last lines) ----\n%s", in.Name, testkitproc.Tail(in.LogPath, 15))
	}
}

// poll calls f until it returns nil or timeout passes (its last error
// then), pausing 50 ms between calls; it polls remote state.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}
