package chaos

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natscluster"
	"github.com/surge-events/surge/pkg/testkit/ports"
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
	// of its replicas was SIGKILLed.
	landingBound = 45 * time.Second
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
	issue, stopIssuing := context.WithCancel(t.Context())
	abort, stopAll := context.WithCancel(t.Context())
	loadDone := make(chan struct{})
	ch.start = time.Now()
	go func() {
		defer close(loadDone)
		l.run(issue, abort)
	}()
	t.Cleanup(func() {
		stopIssuing()
		stopAll()
		<-loadDone
	})

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
			uniq, _ := chTotals(servers)
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
		checkExactlyOnce(t, servers, accepted, nil)
	}
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

// killLeader SIGKILLs the node leading stream, waits for a new leader and
// restarts the node after 1-3 s.
func (ch *chaosCluster) killLeader(ctx context.Context, rep *faultReport, stream string) error {
	var leader int
	err := poll(ctx, electionBound, func() error {
		var err error
		leader, err = ch.streamLeader(ctx, stream)
		return err
	})
	if err != nil {
		return err
	}
	rep.target = ch.c.NATSName(leader)
	if err := ch.c.KillNATS(leader); err != nil {
		return err
	}
	killed := time.Now()
	var next int
	err = poll(ctx, 2*electionBound, func() error {
		i, err := ch.streamLeader(ctx, stream)
		if err == nil && i == leader {
			return errors.New("still the old leader")
		}
		next = i
		return err
	})
	elected := time.Since(killed)
	if err != nil {
		elected = -1
	}
	rep.bounded["new "+stream+" leader"] = measure{elected, electionBound}
	rep.notes = append(rep.notes, fmt.Sprintf("%s leads %s after %.1fs", ch.c.NATSName(max(next, 0)), stream, elected.Seconds()))
	if err := sleep(ctx, time.Second+randDuration(ch.rng, 2*time.Second)); err != nil {
		return err
	}
	restarted := time.Now()
	if err := ch.c.RestartNATS(ctx, leader); err != nil {
		return err
	}
	rep.notes = append(rep.notes, fmt.Sprintf("%s back and current in %.1fs", rep.target, time.Since(restarted).Seconds()))
	return nil
}

// streamLeader asks for stream's leader, waiting at most 500 ms for the
// answer: while the stream has none the request goes unanswered, and the
// election's time is measured by these polls.
func (ch *chaosCluster) streamLeader(ctx context.Context, stream string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	return ch.c.StreamLeader(ctx, ch.js, stream)
}

// killLeasesLeader SIGKILLs the node leading the lease bucket's stream:
// no lease can be renewed or taken until the election ends. It waits
// until every shard of the batchers and sinks has an owner again and
// notes the owner changes meanwhile.
func (ch *chaosCluster) killLeasesLeader(ctx context.Context, rep *faultReport) error {
	start := time.Now()
	if err := ch.killLeader(ctx, rep, "KV_"+lease.Bucket); err != nil {
		return err
	}
	err := poll(ctx, takeoverBound(ch.leases.ttl), func() error {
		for _, service := range []string{"batcher", "sink"} {
			if n := ch.leases.held(service); n < shards {
				return fmt.Errorf("%d %s shards have an owner", n, service)
			}
		}
		return nil
	})
	took := time.Since(start)
	if err != nil {
		took = -1
	}
	rep.bounded["every shard owned after the restart"] = measure{took, takeoverBound(ch.leases.ttl)}
	ranOut := 0
	for _, in := range ch.c.Instances {
		if in.Service == "batcher" || in.Service == "sink" {
			n, err := countLines(in.LogPath, msgRanOut, unix(start))
			if err != nil {
				return err
			}
			ranOut += n
		}
	}
	rep.notes = append(rep.notes, fmt.Sprintf("%d owner changes and %d leases run out meanwhile", ch.leases.changesSince(start), ranOut))
	return nil
}

// liveInstances are the running instances of service.
func (ch *chaosCluster) liveInstances(service string) []*stack.Instance {
	var out []*stack.Instance
	for _, in := range ch.c.Instances {
		if in.Service == service && in.Running() {
			out = append(out, in)
		}
	}
	return out
}

// pick draws one of the live instances of service; for a leased service
// one that holds a shard, so the fault moves some.
func (ch *chaosCluster) pick(service string) (*stack.Instance, string, error) {
	live := ch.liveInstances(service)
	ch.rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	for _, in := range live {
		if service != "batcher" && service != "sink" {
			return in, "", nil
		}
		id, err := leaseInstance(in.LogPath)
		if err != nil {
			return nil, "", err
		}
		if id != "" && len(ch.leases.ownedBy(service, id)) > 0 {
			return in, id, nil
		}
	}
	return nil, "", fmt.Errorf("no live %s holds a shard", service)
}

// killRestart SIGKILLs an instance of service and restarts it after
// 0.2-1.5 s; for a batcher or sink it then waits until each of its shards
// has another owner.
func (ch *chaosCluster) killRestart(ctx context.Context, rep *faultReport, service string) error {
	h, err := ch.target(rep, service)
	if err != nil {
		return err
	}
	in := h.in
	if err := ch.c.KillInstance(in.Name); err != nil {
		return err
	}
	killed := time.Now()
	ch.ends[in.Name] = append(ch.ends[in.Name], runEnd{at: unix(killed), killed: true})
	if err := sleep(ctx, 200*time.Millisecond+randDuration(ch.rng, 1300*time.Millisecond)); err != nil {
		return err
	}
	restarted := time.Now()
	if err := ch.c.RestartInstance(ctx, in.Name); err != nil {
		return err
	}
	rep.bounded["restart to ready"] = measure{time.Since(restarted), restartBound}
	ch.waitTakeovers(ctx, rep, h, killed)
	return nil
}

// hit is the instance a fault hits: its service, its lease id and the
// shards it held.
type hit struct {
	in          *stack.Instance
	service, id string
	owned       []int
}

// target draws the instance of service a fault hits (see pick) and names
// it in rep.
func (ch *chaosCluster) target(rep *faultReport, service string) (hit, error) {
	in, id, err := ch.pick(service)
	if err != nil {
		return hit{}, err
	}
	h := hit{in: in, service: service, id: id, owned: ch.leases.ownedBy(service, id)}
	rep.target = in.Name
	if len(h.owned) > 0 {
		rep.notes = append(rep.notes, fmt.Sprintf("held shards %v as %s", h.owned, id))
	}
	return h, nil
}

// waitTakeovers waits until every shard h held has another owner, at
// most takeoverBound plus a margin, and records each one's time from
// since (-1 for a shard that never moved).
func (ch *chaosCluster) waitTakeovers(ctx context.Context, rep *faultReport, h hit, since time.Time) {
	service, id, owned := h.service, h.id, h.owned
	if len(owned) == 0 {
		return
	}
	err := poll(ctx, takeoverBound(ch.leases.ttl)+10*time.Second, func() error {
		for _, k := range owned {
			if _, at := ch.leases.movedFrom(service, k, id); at.IsZero() {
				return fmt.Errorf("shard %d still with %s", k, id)
			}
		}
		return nil
	})
	if err != nil {
		rep.notes = append(rep.notes, err.Error())
	}
	for _, k := range owned {
		owner, at := ch.leases.movedFrom(service, k, id)
		rep.takeovers[k] = -1
		if !at.IsZero() {
			rep.takeovers[k] = at.Sub(since)
			rep.notes = append(rep.notes, fmt.Sprintf("shard %d to %s", k, owner))
		}
	}
}

// killReplica SIGKILLs a ClickHouse replica, measures how soon rows of
// every logical shard it holds land again (on its peer: the sink shards
// that wrote to it fail over), and restarts it after 2-4 s.
func (ch *chaosCluster) killReplica(ctx context.Context, rep *faultReport) error {
	s := ch.rng.IntN(len(ch.c.ClickHouse.Shards))
	r, err := ch.busyReplica(ctx, s)
	if err != nil {
		return err
	}
	peer := ch.c.ClickHouse.Shards[s][1-r]
	rep.target = fmt.Sprintf("clickhouse-%d-%d", s, r)
	before, err := shardRows(peer.HTTPAddr())
	if err != nil {
		return err
	}
	if err := ch.c.KillReplica(s, r); err != nil {
		return err
	}
	killed := time.Now()
	restartAt := killed.Add(2*time.Second + randDuration(ch.rng, 2*time.Second))
	restarted := false
	restart := func() error {
		start := time.Now()
		if err := ch.c.RestartReplica(ctx, s, r); err != nil {
			return err
		}
		restarted = true
		rep.bounded["replica restart"] = measure{time.Since(start), restartBound}
		return nil
	}
	// The logical shards of ClickHouse shard s: k % shards of the sink.
	landed := map[int]time.Duration{}
	var restartErr error
	_ = poll(ctx, landingBound, func() error {
		if !restarted && time.Now().After(restartAt) {
			if restartErr = restart(); restartErr != nil {
				return nil // ends the poll
			}
		}
		now, err := shardRows(peer.HTTPAddr())
		if err != nil {
			return err
		}
		for k := s; k < shards; k += len(ch.c.ClickHouse.Shards) {
			if _, ok := landed[k]; !ok && now[k] > before[k] {
				landed[k] = time.Since(killed)
			}
		}
		if len(landed) < shards/len(ch.c.ClickHouse.Shards) {
			return fmt.Errorf("rows of shards %v only landed on clickhouse-%d-%d", slices.Sorted(maps.Keys(landed)), s, 1-r)
		}
		return nil
	})
	if restartErr != nil {
		return restartErr
	}
	for k := s; k < shards; k += len(ch.c.ClickHouse.Shards) {
		d, ok := landed[k]
		if !ok {
			d = -1
		}
		rep.bounded[fmt.Sprintf("shard %d lands on clickhouse-%d-%d", k, s, 1-r)] = measure{d, landingBound}
	}
	if !restarted {
		if err := sleep(ctx, time.Until(restartAt)); err != nil {
			return err
		}
		return restart()
	}
	return nil
}

// busyReplica is the replica of ClickHouse shard s that took more INSERT
// queries over one second (a sink shard writes to one replica until it
// fails), so that killing it makes sink shards fail over; a random one
// when neither took any.
func (ch *chaosCluster) busyReplica(ctx context.Context, s int) (int, error) {
	inserts := func() ([2]uint64, error) {
		var out [2]uint64
		for r, srv := range ch.c.ClickHouse.Shards[s] {
			v, err := chQuery(srv.HTTPAddr(), "SELECT value FROM system.events WHERE event = 'InsertQuery'")
			if err != nil {
				return out, err
			}
			if v = strings.TrimSpace(v); v != "" {
				if out[r], err = strconv.ParseUint(v, 10, 64); err != nil {
					return out, fmt.Errorf("InsertQuery %q: %w", v, err)
				}
			}
		}
		return out, nil
	}
	before, err := inserts()
	if err != nil {
		return 0, err
	}
	if err := sleep(ctx, time.Second); err != nil {
		return 0, err
	}
	after, err := inserts()
	if err != nil {
		return 0, err
	}
	d0, d1 := after[0]-before[0], after[1]-before[1]
	switch {
	case d0 > d1:
		return 0, nil
	case d1 > d0:
		return 1, nil
	}
	return ch.rng.IntN(2), nil
}

// shardRows is count() of events_local per logical shard on the server at
// addr.
func shardRows(addr string) (map[int]uint64, error) {
	out, err := chQuery(addr, "SELECT shard, count() FROM surge.events_local GROUP BY shard FORMAT TabSeparated")
	if err != nil {
		return nil, err
	}
	rows := map[int]uint64{}
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var k int
		var n uint64
		if _, err := fmt.Sscan(line, &k, &n); err != nil {
			return nil, fmt.Errorf("rows per shard: %q: %w", line, err)
		}
		rows[k] = n
	}
	return rows, nil
}

// stopForGood SIGTERMs a batcher or sink (of a service with at least two
// live instances) and waits until each of its shards has another owner.
func (ch *chaosCluster) stopForGood(ctx context.Context, rep *faultReport) error {
	h, err := ch.spareTarget(ctx, rep)
	if err != nil {
		return err
	}
	in := h.in
	stopped := time.Now()
	if err := ch.c.StopInstance(in.Name); err != nil {
		return err
	}
	ch.ends[in.Name] = append(ch.ends[in.Name], runEnd{at: unix(time.Now())})
	rep.notes = append(rep.notes, fmt.Sprintf("drained and exited in %.1fs", time.Since(stopped).Seconds()))
	ch.waitTakeovers(ctx, rep, h, stopped)
	return nil
}

// spareTarget is target in the batcher or the sink service, drawn among
// those with at least two live instances, so that another instance can
// take the shards of the one a fault stops or pauses for good. When each
// runs one (a long run stopped the others), it adds an instance first.
func (ch *chaosCluster) spareTarget(ctx context.Context, rep *faultReport) (hit, error) {
	services := []string{"batcher", "sink"}
	ch.rng.Shuffle(len(services), func(i, j int) { services[i], services[j] = services[j], services[i] })
	for _, service := range services {
		if len(ch.liveInstances(service)) >= 2 {
			return ch.target(rep, service)
		}
	}
	rep.notes = append(rep.notes, "one added first")
	if err := ch.addInstance(ctx, rep); err != nil {
		return hit{}, err
	}
	return ch.spareTarget(ctx, rep)
}

// addInstance adds a batcher or sink and waits until it holds its share
// of the shards.
func (ch *chaosCluster) addInstance(ctx context.Context, rep *faultReport) error {
	service := []string{"batcher", "sink"}[ch.rng.IntN(2)]
	start := time.Now()
	in, err := ch.c.AddInstance(ctx, service)
	if err != nil {
		return err
	}
	rep.target = in.Name
	ready := time.Now()
	rep.bounded["start to ready"] = measure{ready.Sub(start), restartBound}
	share := shards / len(ch.liveInstances(service))
	var id string
	err = poll(ctx, takeoverBound(ch.leases.ttl)+10*time.Second, func() error {
		// Ready comes a moment before the instance logs its lease id.
		if id == "" {
			var err error
			if id, err = leaseInstance(in.LogPath); err != nil {
				return err
			}
			if id == "" {
				return fmt.Errorf("%s has not logged its lease instance id", in.Name)
			}
		}
		if n := len(ch.leases.ownedBy(service, id)); n < share {
			return fmt.Errorf("%s holds %d shards of its %d", in.Name, n, share)
		}
		return nil
	})
	took := time.Since(ready)
	if err != nil {
		took = -1
		rep.notes = append(rep.notes, err.Error())
	}
	rep.bounded[fmt.Sprintf("holds its share (%d shards) after ready", share)] = measure{took, takeoverBound(ch.leases.ttl)}
	rep.notes = append(rep.notes, fmt.Sprintf("holds %v as %s", ch.leases.ownedBy(service, id), id))
	return nil
}

// freeze SIGSTOPs a batcher or sink holding shards (of a service with at
// least two live instances), waits until each of them has another owner
// (its leases ran out), then SIGCONTs it: a paused owner that resumes
// must not publish or insert for the shards it lost beyond the one output
// it had on its way (see overlaps).
func (ch *chaosCluster) freeze(ctx context.Context, rep *faultReport) error {
	h, err := ch.spareTarget(ctx, rep)
	if err != nil {
		return err
	}
	in := h.in
	pid := in.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP %s: %w", in.Name, err)
	}
	if err := poll(ctx, 5*time.Second, func() error {
		ok, err := stopped(pid)
		if err == nil && !ok {
			err = errors.New("not every thread stopped yet")
		}
		return err
	}); err != nil {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		return fmt.Errorf("freeze %s: %w", in.Name, err)
	}
	frozen := time.Now()
	ch.waitTakeovers(ctx, rep, h, frozen)
	// Before the signal: the resumed process logs within milliseconds.
	thawed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		return fmt.Errorf("SIGCONT %s: %w", in.Name, err)
	}
	ch.frozen[in.Name] = append(ch.frozen[in.Name], pause{run: len(ch.ends[in.Name]), from: unix(frozen), to: unix(thawed)})
	rep.notes = append(rep.notes, fmt.Sprintf("resumed after %.1fs", thawed.Sub(frozen).Seconds()))
	return nil
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
		t.Logf("---- %s log (last lines) ----\n%s", in.Name, tailFile(in.LogPath, 15))
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

// leaseWatch follows the shard keys of the lease bucket: who holds each
// and since when (the server's time of the write that gave it).
type leaseWatch struct {
	ttl    time.Duration
	w      jetstream.KeyWatcher
	done   chan struct{}
	mu     sync.Mutex
	owners map[string]leaseOwner
	// history lists every owner each key had, in order.
	history map[string][]leaseOwner
}

type leaseOwner struct {
	id    string // "" once deleted
	since time.Time
}

func watchLeases(ctx context.Context, js jetstream.JetStream) (*leaseWatch, error) {
	kv, err := js.KeyValue(ctx, lease.Bucket)
	if err != nil {
		return nil, fmt.Errorf("lease bucket: %w", err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease bucket: %w", err)
	}
	w, err := kv.Watch(ctx, "*.shard.*")
	if err != nil {
		return nil, fmt.Errorf("watch leases: %w", err)
	}
	lw := &leaseWatch{ttl: st.TTL(), w: w, done: make(chan struct{}),
		owners: map[string]leaseOwner{}, history: map[string][]leaseOwner{}}
	go func() {
		defer close(lw.done)
		for e := range w.Updates() {
			if e == nil {
				continue // the initial values are in
			}
			id := string(e.Value())
			if e.Operation() != jetstream.KeyValuePut {
				id = ""
			}
			lw.mu.Lock()
			if cur, ok := lw.owners[e.Key()]; !ok || cur.id != id {
				o := leaseOwner{id: id, since: e.Created()}
				lw.owners[e.Key()] = o
				lw.history[e.Key()] = append(lw.history[e.Key()], o)
			}
			lw.mu.Unlock()
		}
	}()
	return lw, nil
}

func (lw *leaseWatch) stop() {
	_ = lw.w.Stop()
	<-lw.done
}

// ownedBy lists the shards of service whose key names id, ascending.
func (lw *leaseWatch) ownedBy(service, id string) []int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	var out []int
	for k := range shards {
		if o := lw.owners[service+".shard."+strconv.Itoa(k)]; id != "" && o.id == id {
			out = append(out, k)
		}
	}
	return out
}

// held counts the shards of service whose key names an owner.
func (lw *leaseWatch) held(service string) int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	n := 0
	for k := range shards {
		if lw.owners[service+".shard."+strconv.Itoa(k)].id != "" {
			n++
		}
	}
	return n
}

// changesSince counts the owner changes of every key after t.
func (lw *leaseWatch) changesSince(t time.Time) int {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	n := 0
	for _, h := range lw.history {
		for _, o := range h {
			if o.since.After(t) {
				n++
			}
		}
	}
	return n
}

// movedFrom is the first owner of shard k of service after id's last
// hold of it, and when it took the key; zero while nobody did.
func (lw *leaseWatch) movedFrom(service string, k int, id string) (string, time.Time) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	h := lw.history[service+".shard."+strconv.Itoa(k)]
	last := -1
	for i, o := range h {
		if o.id == id {
			last = i
		}
	}
	if last < 0 {
		return "", time.Time{}
	}
	for _, o := range h[last+1:] {
		if o.id != "" {
			return o.id, o.since
		}
	}
	return "", time.Time{}
}

// checkAgreedColumns checks that every column of the agreed schema (the
// load brought a new key every few requests, under every fault) is in
// events_local and events of every replica of every shard, with the type
// the schema says, within a reconcile period, and that every value is in
// its column or accounted for.
func checkAgreedColumns(t *testing.T, js jetstream.JetStream, replicaSets [][]string) {
	t.Helper()
	reg, err := schema.OpenRegistry(t.Context(), js, "events", 3, 10*time.Second)
	require.NoError(t, err)
	doc := reg.Current().Doc
	require.NotEmpty(t, doc.Columns, "no typed column agreed under load")
	var servers []string
	for _, set := range replicaSets {
		servers = append(servers, set...)
	}
	ok := assert.EventuallyWithT(t, func(col *assert.CollectT) {
		for _, addr := range servers {
			for _, table := range []string{"events_local", "events"} {
				out, err := chQuery(addr, "SELECT name, type FROM system.columns WHERE database = 'surge' AND table = '"+table+"' FORMAT TabSeparated")
				if !assert.NoError(col, err) {
					return
				}
				have := map[string]string{}
				for _, line := range strings.Split(out, "\n") {
					if name, typ, found := strings.Cut(line, "\t"); found {
						have[name] = typ
					}
				}
				for name, c := range doc.Columns {
					assert.Contains(col, have, name, "%s %s", addr, table)
					if k := c.Kind(); k != 0 && have[name] != "" {
						assert.Equal(col, schema.ColumnType(k, c.CHType, schema.Server{Major: 18, Minor: 16}), have[name], "%s %s %s", addr, table, name)
					}
				}
			}
		}
	}, 90*time.Second, time.Second)
	if !ok {
		return
	}
	t.Logf("the %d agreed columns are on every replica's local and Distributed tables", len(doc.Columns))
	// Values present: a row whose properties hold a key with a column has
	// the value in it, or the path in _unpromoted (its batch was built
	// before the column was agreed), or in _conflicts, on some replica of
	// its shard. On 18.16 a replica that was inactive while columns were
	// added (restarted, its old ZooKeeper session not yet expired) can read
	// NULL there for rows it got from the other replica before its own
	// ALTER (README, "Typed columns"): such rows are counted and logged,
	// and must be whole on another replica.
	for shard := range replicaSets[0] {
		for name, c := range doc.Columns {
			key := strings.TrimPrefix(c.Path, "/")
			if strings.Contains(key, "/") {
				continue // the load's keys are top-level
			}
			best := -1
			var counts []string
			for r := range replicaSets {
				addr := replicaSets[r][shard]
				n, err := chQuery(addr, fmt.Sprintf(`SELECT count() FROM surge.events_local WHERE visitParamHas(properties, '%s')
					AND %s IS NULL AND NOT has(_unpromoted, '%s') AND NOT visitParamHas(_conflicts, '%s') FORMAT TabSeparated`, key, name, c.Path, c.Path))
				require.NoError(t, err)
				v, err := strconv.Atoi(strings.TrimSpace(n))
				require.NoError(t, err)
				counts = append(counts, fmt.Sprintf("%s: %d", addr, v))
				if best < 0 || v < best {
					best = v
				}
			}
			require.Zero(t, best, "shard server %d: rows whose %s is in properties but neither in %s, _unpromoted nor _conflicts on any replica (%s)",
				shard, c.Path, name, strings.Join(counts, ", "))
			if len(replicaSets) > 1 {
				for _, cnt := range counts {
					if !strings.HasSuffix(cnt, ": 0") {
						t.Logf("rows with %s NULL though in properties (a replica that was inactive while it was added): %s", name, cnt)
					}
				}
			}
		}
	}
}
