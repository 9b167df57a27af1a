// Package bench is `surge bench`: it starts a local stack (or a local
// cluster), drives load into it over HTTP, NATS or Segment's API, and
// reports throughput, latency, a reference of ClickHouse alone and, with
// --report, a page of plots. The surge command calls Run.
package bench

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/telemetry"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/services/batcher"
	"github.com/surge-events/surge/services/sink"
	"github.com/surge-events/surge/tools/stack"
)

type benchFlags struct {
	events     int
	perRequest int
	clients    int
	users      int
	rate       int
	rateFor    time.Duration
	shards     int
	servers    int
	dir        string
	// clickhouseDir holds the ClickHouse servers' data when set, each
	// stack's in a folder of its own removed after; else the data folder.
	clickhouseDir string
	cpuProfile    string
	memProfile    string
	via           string
	report        string
	trace         bool
	cluster       bool
	natsSync      natsserver.Sync
	// properties is the schema.Profile the events carry; "" for the
	// bench's own three properties.
	properties string
	// modes are the typed columns modes --typed runs, one fresh stack
	// each; nil for one run with the schema section's defaults.
	modes []schema.Mode
	// tenants spreads the load over that many tenants, quotas off and
	// then on (tenants.go); 0 for the one default tenant.
	tenants int
	// dedup runs the load with event ids, dedup off and then on (dedup.go).
	dedup bool
	// suppressed, with dedup, puts that many users on the suppression
	// list of the dedup-on stacks too.
	suppressed int
	// sinkLeg times the sink alone on a full BATCHES (sinkleg.go).
	sinkLeg bool
	// minAge is the batch policy's MinAge (the early cut for an idle sink).
	minAge time.Duration
	// maxRows is the batch policy's MaxRows.
	maxRows int
	// maxInserts is the sink's MaxInserts: its inserts at once a server.
	maxInserts int
}

// Run is `surge bench` with its arguments: it starts a stack and runs, in order, a
// throughput phase (load.go over HTTP, nats.go over NATS), a
// latency phase (latency.go) and a reference of ClickHouse alone
// (ref.go), then prints one report. With --typed both it does so on
// four fresh stacks, off, infer, infer, off, and prints the modes side by
// side (typed.go).
func Run(args []string) error {
	f, err := parseBenchFlags(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := chserver.EnsureInstalled(ctx, func(format string, a ...any) { fmt.Printf("bench: "+format+"\n", a...) }); err != nil {
		return err
	}
	if f.dir == "" {
		d, err := os.MkdirTemp("", "surge-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		f.dir = d
	}
	gen := newGenerator(f.users, f.perRequest, f.properties, distinctEvents(f))
	fmt.Printf("bench: %d distinct events in %d request bodies (%.0f MiB), sent again and again\n", len(gen.bodies)*f.perRequest, len(gen.bodies), mib(uint64(gen.size())))
	if f.properties != "" {
		fmt.Printf("bench: events carry properties of profile %s\n", f.properties)
	}

	if f.tenants > 0 {
		return benchTenants(ctx, f, gen)
	}
	if f.dedup {
		return benchDedup(ctx, f, gen)
	}
	if len(f.modes) > 1 {
		return benchTyped(ctx, f, gen)
	}

	run := stackRun{dir: f.dir, report: f.report, cpuProfile: f.cpuProfile, memProfile: f.memProfile, sinkLeg: f.sinkLeg}
	if len(f.modes) == 1 {
		cfg := schema.DefaultConfig()
		cfg.Mode = f.modes[0]
		run.schema = &cfg
	}
	r, err := benchStack(ctx, f, gen, run)
	if err != nil {
		return err
	}
	if len(r.queries.queries) > 0 {
		fmt.Print(queryReport(r))
	}
	if !f.cluster {
		return nil
	}
	// The cluster gets the machine to itself: benchStack stopped the stack.
	fmt.Println("bench: single-process stack stopped; starting the cluster")
	cl, err := benchCluster(ctx, f, gen, r.rate)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	single := benchFigures{accepted: r.tp.accepted, inserted: r.tp.inserted, rate: r.rate, lat: r.lat, heap: r.peakHeap, processes: 1}
	fmt.Print(compareReport(f, single, cl))
	return nil
}

// parseBenchFlags parses and checks the flags of `surge bench`.
func parseBenchFlags(args []string) (benchFlags, error) {
	var f benchFlags
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.IntVar(&f.events, "events", 1_000_000, "events to send in the throughput phase")
	fs.IntVar(&f.perRequest, "per-request", 500, "events per HTTP request")
	fs.IntVar(&f.clients, "clients", 8, "concurrent HTTP clients")
	fs.IntVar(&f.users, "users", 100_000, "distinct user ids")
	fs.IntVar(&f.rate, "rate", 0, "events/s of the latency phase (0: half the measured throughput)")
	fs.DurationVar(&f.rateFor, "rate-for", 20*time.Second, "length of the latency phase")
	fs.IntVar(&f.shards, "shards", 8, "logical shards")
	fs.IntVar(&f.servers, "clickhouse-servers", 2, "clickhouse-server processes")
	fs.StringVar(&f.dir, "dir", "", "data folder (default: a new temporary folder, removed after)")
	fs.StringVar(&f.clickhouseDir, "clickhouse-dir", "", "keep the ClickHouse servers' data under `dir` instead of the data folder, each stack's in a new folder removed after: a filesystem of its own, such as a journaled ext4 or a tmpfs (ClickHouse creates and deletes files for every column of every part, and ext4 without a journal makes each new file search for a free inode; see docs/performance.md)")
	fs.StringVar(&f.via, "via", "http", "how events arrive: http (POST /v1/events), nats (async JetStream publishes to surge.in.bench.bench) or segment (http, then the same load through Segment's POST /v1/batch, both reported)")
	fs.BoolVar(&f.trace, "trace", false, "trace the services as deployed: OpenTelemetry SDK, default parent-based 1% sampler, spans batched to an exporter that discards them")
	fs.StringVar(&f.memProfile, "memprofile", "", "write a heap profile taken at the end of the throughput phase to `file`, and one at each service's peak live heap during it to file-peak-SERVICE.ext (file-MODE.ext and file-MODE-peak-SERVICE.ext for each --typed mode when there are two)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the throughput phase (services and load generator) to `file`, and of the sink leg to file-sinkleg.ext (file-MODE.ext for each --typed mode when there are two)")
	fs.StringVar(&f.report, "report", "", "write report.html (plots of the run, self-contained) and report.json (its raw figures) into `dir` (dir/MODE for each --typed mode when there are two)")
	fs.BoolVar(&f.cluster, "cluster", false, "after the single-process report, run the throughput and latency phases again against `surge up --cluster`'s topology and print both side by side")
	fs.StringVar(&f.properties, "properties", "", "the events' properties: a generated profile, "+strings.Join(schema.Profiles, ", ")+
		" (seeded, the same every run); default: three keys, path, ref and ms")
	typed := fs.String("typed", "", "typed columns mode of the batcher and the sink: off, infer, or both (off, infer, infer, off, each on a fresh stack, "+
		"then each mode's two runs averaged side by side and, after each infer run, the same queries over typed columns and over properties); "+
		"default: both with --properties, otherwise one run with the schema section's default ("+string(schema.DefaultConfig().Mode)+")")
	fs.IntVar(&f.tenants, "tenants", 0, "spread the load over `N` tenants with API keys, one per request in turn, on four fresh stacks (quotas off, on, on, off: every tenant under a quota it never reaches when on); prints each mode averaged and their ratio")
	fs.IntVar(&f.suppressed, "suppressed", 0, "with --dedup: the dedup-on stacks also hold `N` erased users (none of the load's) on the suppression list, so every event is checked against it")
	fs.DurationVar(&f.minAge, "batch-min-age", batch.DefaultPolicy().MinAge, "the batcher's early cut: a batch this old is cut once the shard's sink is idle; 0 turns it off (compare the latency phase with and without)")
	fs.IntVar(&f.maxInserts, "sink-max-inserts", sink.DefaultConfig().ClickHouse.MaxInserts, "the sink's inserts at once on a ClickHouse server (its shards there take turns)")
	fs.IntVar(&f.maxRows, "batch-max-rows", batch.DefaultPolicy().MaxRows, "the batcher's MaxRows: the most rows a batch (one insert) holds")
	fs.BoolVar(&f.sinkLeg, "sink-leg", true, "after the latency phase, stop the sink, send the throughput phase's load again until BATCHES holds it all, then start the sink and time it alone (single stack runs)")
	fs.BoolVar(&f.dedup, "dedup", false, "give every event its own event_id and run on four fresh stacks: event-level deduplication off, on, on, off; prints each mode averaged and their ratio")
	natsSync := stack.NATSSyncFlag(fs)
	if err := fs.Parse(args); err != nil {
		return benchFlags{}, err
	}
	var err error
	if f.natsSync, err = natsserver.ParseSync(*natsSync); err != nil {
		return benchFlags{}, err
	}
	if f.via != "http" && f.via != "nats" && f.via != "segment" {
		return benchFlags{}, fmt.Errorf("--via must be http, nats or segment, got %q", f.via)
	}
	if f.cluster && f.via != "http" {
		return benchFlags{}, errors.New("--cluster sends over HTTP only: drop --via nats")
	}
	if f.tenants > 0 && (f.via != "http" || f.cluster || len(f.modes) > 1) {
		return benchFlags{}, errors.New("--tenants sends over HTTP to one stack: drop --via, --cluster and a second --typed mode")
	}
	if f.suppressed > 0 && !f.dedup {
		return benchFlags{}, errors.New("--suppressed goes with --dedup")
	}
	if f.dedup && (f.via != "http" || f.cluster || f.tenants > 0 || len(f.modes) > 1) {
		return benchFlags{}, errors.New("--dedup sends over HTTP to one stack: drop --via, --cluster, --tenants and a second --typed mode")
	}
	if f.properties != "" && !slices.Contains(schema.Profiles, f.properties) {
		return benchFlags{}, fmt.Errorf("--properties must be one of %s, got %q", strings.Join(schema.Profiles, ", "), f.properties)
	}
	if f.modes, err = typedModes(*typed, f.properties, f.cluster); err != nil {
		return benchFlags{}, err
	}
	return f, nil
}

// policyOf is the default batch policy with the bench's MinAge and MaxRows.
func policyOf(f benchFlags) batch.Policy {
	p := batch.DefaultPolicy()
	p.MinAge = f.minAge
	p.MaxRows = f.maxRows
	return p
}

// stackRun is how benchStack runs one stack: where, with which schema
// section (nil: the default) and where its report and profiles go.
type stackRun struct {
	dir   string
	fresh bool
	// apiKeys turns authentication on (tenants.go); quotas sets every
	// tenant's quota (benchQuota) once the stack runs.
	apiKeys map[string]string
	quotas  bool
	schema  *schema.Config
	// dedup is the batcher's dedup section; nil: the default.
	dedup *batcher.DedupConfig
	// suppressed puts that many users on the suppression list (suppress.go).
	suppressed int
	// sinkLeg times the sink alone after the latency phase (sinkleg.go).
	sinkLeg                bool
	report                 string
	cpuProfile, memProfile string
}

// benchStack starts a stack as run says, runs the throughput, latency
// and reference phases against it, prints its report, counts its typed
// columns and, in infer mode with --properties, times the typed
// queries; it stops the stack before it returns.
func benchStack(ctx context.Context, f benchFlags, gen *generator, run stackRun) (_ benchReport, err error) {
	mode := schema.DefaultConfig().Mode
	if run.schema != nil {
		mode = run.schema.Mode
	}
	fmt.Printf("bench: starting stack (%d shards, %d ClickHouse servers, file-backed JetStream, sync %s, typed columns %s) in %s\n",
		f.shards, f.servers, f.natsSync, mode, run.dir)
	var chDir string // the data folder's when empty
	if f.clickhouseDir != "" {
		d, err := os.MkdirTemp(f.clickhouseDir, "surge-bench-clickhouse-")
		if err != nil {
			return benchReport{}, fmt.Errorf("clickhouse dir: %w", err)
		}
		defer os.RemoveAll(d)
		chDir = d
	}
	chFS := filesystem(cmp.Or(chDir, run.dir))
	fmt.Printf("bench: ClickHouse data in %s (%s)\n", cmp.Or(chDir, run.dir), chFS)
	opts := stack.Options{Dir: run.dir, ClickHouseDir: chDir, Fresh: run.fresh, Shards: f.shards, ClickHouseServers: f.servers, NATSPort: -1, NATSSync: f.natsSync,
		Producers: []natsserver.User{benchProducer}, Schema: run.schema, APIKeys: run.apiKeys, Dedup: run.dedup, Policy: policyOf(f),
		SinkMaxInserts: f.maxInserts}
	tracing := "off"
	var exported *discardExporter
	if f.trace {
		otel.SetTextMapPropagator(propagation.TraceContext{})
		exported = &discardExporter{}
		provider := sdktrace.NewTracerProvider(sdktrace.WithSampler(telemetry.DefaultSampler()), sdktrace.WithBatcher(exported))
		defer func() { _ = provider.Shutdown(context.Background()) }()
		opts.TracerProvider = provider
		tracing = "on (" + telemetry.DefaultSampler().Description() + ", spans discarded)"
	}
	fmt.Printf("bench: tracing %s\n", tracing)
	load := loadAverage()
	st, err := stack.Start(ctx, opts)
	if err != nil {
		return benchReport{}, err
	}
	defer func() {
		if serr := st.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stop the stack: %w", serr)
		}
	}()
	poster := newPoster(run.apiKeys)
	if run.quotas {
		if err := applyQuotas(ctx, st, poster.keys[0]); err != nil {
			return benchReport{}, fmt.Errorf("quotas: %w", err)
		}
		fmt.Printf("bench: every tenant under a quota of %.0g events/s\n", benchQuota.EventsPerSecond)
	}
	if run.suppressed > 0 {
		if err := suppressUsers(ctx, st, run.suppressed); err != nil {
			return benchReport{}, fmt.Errorf("suppression: %w", err)
		}
		fmt.Printf("bench: %d users (none of the load's) on the suppression list\n", run.suppressed)
	}
	send := func(body []byte) bool { return poster.post(ctx, st.IngestURL, body) == nil }
	if f.via == "nats" {
		p, err := newNATSProducer(st)
		if err != nil {
			return benchReport{}, err
		}
		defer p.close()
		send = func(body []byte) bool { return p.send(ctx, body) }
	}

	ch, err := clickhouse.Open(&clickhouse.Options{Addr: st.ClickHouse.Addrs()[:1], Settings: clickhouse.Settings{"max_execution_time": 60}})
	if err != nil {
		return benchReport{}, err
	}
	defer ch.Close() // once, before the stack stops: a second Close of a clickhouse-go conn blocks

	fmt.Printf("bench: throughput phase: %d events, %d per request, %d clients\n", f.events, f.perRequest, f.clients)
	r := benchReport{flags: f, mode: mode, loadAvg: load, chFS: chFS}
	rec := newRunRecord(run.report, st, gen)
	defer rec.stop()
	var peakFile func(string) string
	if run.memProfile != "" {
		peakFile = func(service string) string { return suffixed(run.memProfile, "peak-"+service) }
	}
	heap := watchHeap(peakFile)
	stopCPU, err := cpuWatch(run.cpuProfile)
	if err != nil {
		heap()
		return benchReport{}, err
	}
	stopCPU = sync.OnceValues(stopCPU)
	defer func() { _, _ = stopCPU() }() // when the phase fails
	cost := startCost(st)
	if f.via == "nats" {
		r.tp, err = throughputNATS(ctx, st, gen, f)
	} else {
		r.tp, err = throughputOf(ctx, []string{st.IngestURL}, stackInserted(st), gen, f,
			func(ctx context.Context, url string) error { return poster.post(ctx, url, gen.body()) })
	}
	if err == nil {
		r.cost = cost(f.events / f.perRequest * f.perRequest)
		r.cpu, err = stopCPU()
	}
	if err == nil {
		err = insertsOf(ctx, st.ClickHouse.Addrs(), uint64(r.cost.events), &r.store)
	}
	if err == nil {
		// Rows per shard are the first load's: taken before a segment run adds its own.
		err = rec.throughputDone(r.tp)
	}
	if f.via == "segment" && err == nil {
		fmt.Printf("bench: the same load through POST /v1/batch\n")
		rec.phase("segment")
		r.segment, err = throughputSegment(ctx, st, gen, f)
	}
	r.heap = heap()
	r.peakHeap = r.heap.inuse
	if run.memProfile != "" {
		if perr := writeHeapProfile(run.memProfile); perr != nil {
			return benchReport{}, perr
		}
	}
	if err != nil {
		return benchReport{}, err
	}
	r.rate = f.rate
	if r.rate == 0 {
		r.rate = int(r.tp.inserted / 2)
	}
	fmt.Printf("bench: latency phase: %d events/s for %s with probes\n", r.rate, f.rateFor)
	rec.phase("latency")
	watched := watchBreakdown(st, f.minAge)
	r.lat, err = latency(ctx, st.Database, ch, gen, send, r.rate, f.rateFor, f.perRequest)
	r.breakdown = watched()
	if err != nil {
		return benchReport{}, err
	}
	if run.sinkLeg {
		fmt.Printf("bench: sink leg: the sink stopped while %d events fill BATCHES, then started and timed alone\n", f.events)
		rec.phase("sink leg")
		legProfile := ""
		if run.cpuProfile != "" {
			legProfile = suffixed(run.cpuProfile, "sinkleg")
		}
		if r.leg, err = sinkLeg(ctx, st, gen, f, legProfile, func(ctx context.Context, url string) error { return poster.post(ctx, url, gen.body()) }); err != nil {
			return benchReport{}, fmt.Errorf("sink leg: %w", err)
		}
	}
	settled, err := settleMerges(ctx, st.ClickHouse.Addrs())
	if err != nil {
		return benchReport{}, err
	}
	fmt.Printf("bench: ClickHouse reference inserts (merges ended %s after the last phase)\n", settled.Round(time.Millisecond))
	rec.phase("reference")
	if r.ref, err = clickhouseReference(ctx, st.ClickHouse.Addrs(), st.Database, f.events, func() float64 { return clickhouseCPU(st.ClickHouse) }); err != nil {
		return benchReport{}, err
	}
	if r.columns, err = typedColumns(ctx, ch, st.Database); err != nil {
		return benchReport{}, err
	}

	r.tracing = tracing
	if exported != nil {
		r.tracing = fmt.Sprintf("on at the default sampler, %d spans exported", exported.spans.Load())
	}
	fmt.Print(r.summary())
	if f.via == "segment" {
		fmt.Print(segmentReport(f, r.tp, r.segment))
	}
	if err := rec.write(r); err != nil {
		return benchReport{}, fmt.Errorf("report: %w", err)
	}
	if mode == schema.Infer && f.properties != "" {
		fmt.Println("bench: queries over typed columns and over properties")
		if r.queries, err = typedQueries(ctx, ch, st.Database, gen); err != nil {
			return benchReport{}, fmt.Errorf("queries: %w", err)
		}
	}
	// Last: OPTIMIZE FINAL leaves the table as no query above saw it.
	if err := tablesOf(ctx, st.ClickHouse.Addrs(), st.Database, &r.store); err != nil {
		return benchReport{}, err
	}
	fmt.Print(storageReport(r.store))
	return r, nil
}

// benchReport is what the phases measured.
type benchReport struct {
	flags     benchFlags
	mode      schema.Mode // typed columns mode of the stack
	tracing   string
	tp        throughputResult
	cost      runCost // CPU and BATCHES bytes of the throughput phase
	rate      int     // events/s of the latency phase
	lat       latencyResult
	breakdown breakdown        // where the latency phase's time went
	segment   throughputResult // --via segment: the load through /v1/batch
	ref       reference        // ClickHouse alone
	peakHeap  uint64
	heap      heapPeaks     // peakHeap and the live heap by owner
	leg       sinkLegResult // the sink alone; zero when not run
	// cpu is each owner's CPU seconds in the throughput phase (cpu.go).
	cpu     map[string]float64
	columns int          // typed columns of events_local at the end
	loadAvg float64      // the machine's 1-minute load average before the stack started
	chFS    string       // the filesystem under ClickHouse's data (filesystem)
	queries queryResults // after an infer run with properties
	store   storage      // what the run's rows cost ClickHouse, read at the end
}

// summary is the report the bench prints.
func (r benchReport) summary() string {
	f := r.flags
	props := f.properties
	if props == "" {
		props = "path, ref, ms"
	}
	return fmt.Sprintf(`
Surge bench (%d shards, %d ClickHouse servers on %s, %d clients x %d events/request, via %s, JetStream sync %s, tracing %s, properties %s, typed columns %s, batches of up to %d rows, batch min age %s, sink inserts at once a server %d)
  %-30s%10.0f events/s   (%d events in %s)
  inserted (queryable)          %10.0f events/s   (all %d rows in ClickHouse after %s)
  ingest-to-queryable at %d/s:  p50 %s  p99 %s  max %s  (%d probes)
  ClickHouse bulk insert        %10.0f rows/s     (%d of this run's rows again, each server its own, 10,000-row blocks, %d connections a server; ClickHouse CPU per 1M rows, its merges included, %.1f s)
    one block repeated          %10.0f rows/s     (10,000 synthetic rows alike but for their ids, 50 times into server 0, one connection; CPU %.1f s)
  ClickHouse single-row insert  %10.0f rows/s     (bulk is %.0fx faster)
  peak Go heap, full load       %10.0f MiB        (all four services and the load generator, one process)
  CPU per 1M events             %10.1f s          (the bench process, throughput phase; ClickHouse %.1f s)
  BATCHES bytes per event       %10.0f            (encoded batches the batcher published, throughput phase: %.0f of %.0f rows on average)
  typed columns in events_local %10d
`, f.shards, f.servers, r.chFS, f.clients, f.perRequest, f.via, f.natsSync, r.tracing, props, r.mode, f.maxRows, f.minAge, f.maxInserts,
		map[string]string{"http": "accepted (HTTP 202)", "segment": "accepted (HTTP 202)", "nats": "accepted (JetStream PubAck)"}[f.via],
		r.tp.accepted, f.events, r.tp.acceptedIn.Round(time.Millisecond),
		r.tp.inserted, f.events, r.tp.insertedIn.Round(time.Millisecond),
		r.rate, r.lat.p50, r.lat.p99, r.lat.max, r.lat.n,
		r.ref.bulk, f.events, referenceConns, r.ref.bulkCPU, r.ref.repeated, r.ref.repeatedCPU, r.ref.single, r.ref.bulk/r.ref.single, mib(r.peakHeap),
		r.cost.processPerM(), r.cost.clickhousePerM(), r.cost.batchBytesPerEvent(), r.cost.batches, r.cost.rowsPerBatch(), r.columns) + r.breakdown.summary() + r.legSummary() + r.heapSummary() + cpuReport(r.cpu, r.cost.events)
}

// legSummary puts the sink alone and the whole path beside ClickHouse's
// bulk rate of the same run; "" when the sink leg did not run.
func (r benchReport) legSummary() string {
	if r.leg.events == 0 || r.ref.bulk == 0 {
		return ""
	}
	return fmt.Sprintf(`  against ClickHouse's bulk rate in this run (%.0f rows/s):
    sink leg alone              %10.0f rows/s     %3.0f%% of bulk  (%d rows from a full BATCHES in %s; the sink ready %s after its start;
                                                                  %.0f inserts of %.0f rows on average; CPU per 1M rows: the bench process %.1f s, ClickHouse %.1f s, its merges included)
    end to end (inserted)       %10.0f events/s   %3.0f%% of bulk
    ingest to BATCHES           %10.0f events/s   %3.0f%% of bulk  (the hops before the sink, the sink stopped)
`, r.ref.bulk,
		r.leg.sink, 100*r.leg.sink/r.ref.bulk, r.leg.events, r.leg.sinkIn.Round(time.Millisecond), r.leg.startup.Round(time.Millisecond),
		r.leg.inserts, r.leg.inserted/max(r.leg.inserts, 1), r.leg.cost.processPerM(), r.leg.cost.clickhousePerM(),
		r.tp.inserted, 100*r.tp.inserted/r.ref.bulk,
		r.leg.upstream, 100*r.leg.upstream/r.ref.bulk)
}

// heapSummary lists the throughput phase's live heap by owner; "" when
// it was not measured.
func (r benchReport) heapSummary() string {
	if len(r.heap.owners) == 0 {
		return ""
	}
	return r.heap.ownersReport()
}

// discardExporter counts the spans it is given and drops them: the cost
// of tracing without the cost of a collector on the same two cores.
type discardExporter struct{ spans atomic.Int64 }

func (e *discardExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.spans.Add(int64(len(spans)))
	return nil
}

func (e *discardExporter) Shutdown(context.Context) error { return nil }
