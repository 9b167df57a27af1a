package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/surge-events/surge/pkg/telemetry"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
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
	cpuProfile string
	memProfile string
	via        string
	report     string
	trace      bool
	cluster    bool
	natsSync   natsserver.Sync
}

// bench is `surge bench`: it starts a stack and runs, in order, a
// throughput phase (benchload.go over HTTP, benchnats.go over NATS), a
// latency phase (benchlatency.go) and a reference of ClickHouse alone
// (benchref.go), then prints one report.
func bench(args []string) error {
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
	fs.StringVar(&f.via, "via", "http", "how events arrive: http (POST /v1/events), nats (async JetStream publishes to surge.in.bench.bench) or segment (http, then the same load through Segment's POST /v1/batch, both reported)")
	fs.BoolVar(&f.trace, "trace", false, "trace the services as deployed: OpenTelemetry SDK, default parent-based 1% sampler, spans batched to an exporter that discards them")
	fs.StringVar(&f.memProfile, "memprofile", "", "write a heap profile taken at the end of the throughput phase to `file`")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the throughput phase (services and load generator) to `file`")
	fs.StringVar(&f.report, "report", "", "write report.html (plots of the run, self-contained) and report.json (its raw figures) into `dir`")
	fs.BoolVar(&f.cluster, "cluster", false, "after the single-process report, run the throughput and latency phases again against `surge up --cluster`'s topology and print both side by side")
	natsSync := natsSyncFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if f.natsSync, err = natsserver.ParseSync(*natsSync); err != nil {
		return err
	}
	if f.via != "http" && f.via != "nats" && f.via != "segment" {
		return fmt.Errorf("--via must be http, nats or segment, got %q", f.via)
	}
	if f.cluster && f.via != "http" {
		return errors.New("--cluster sends over HTTP only: drop --via nats")
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
	fmt.Printf("bench: starting stack (%d shards, %d ClickHouse servers, file-backed JetStream, sync %s) in %s\n", f.shards, f.servers, f.natsSync, f.dir)
	opts := stack.Options{Dir: f.dir, Shards: f.shards, ClickHouseServers: f.servers, NATSPort: -1, NATSSync: f.natsSync,
		Producers: []natsserver.User{benchProducer}}
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
	st, err := stack.Start(ctx, opts)
	if err != nil {
		return err
	}
	stopStack := sync.OnceValue(st.Stop)
	defer stopStack()
	send := func(body []byte) bool { return post(ctx, st.IngestURL, body) == nil }
	if f.via == "nats" {
		p, err := newNATSProducer(st)
		if err != nil {
			return err
		}
		defer p.close()
		send = func(body []byte) bool { return p.send(ctx, body) }
	}

	ch, err := clickhouse.Open(&clickhouse.Options{Addr: st.ClickHouse.Addrs()[:1], Settings: clickhouse.Settings{"max_execution_time": 60}})
	if err != nil {
		return err
	}
	closeCH := sync.OnceValue(ch.Close) // a second Close of a clickhouse-go conn blocks
	defer closeCH()

	gen := newGenerator(f.users, f.perRequest)
	fmt.Printf("bench: throughput phase: %d events, %d per request, %d clients\n", f.events, f.perRequest, f.clients)
	if f.cpuProfile != "" {
		pf, err := os.Create(f.cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
	}
	r := benchReport{flags: f}
	rec := newRunRecord(f.report, st, gen)
	defer rec.stop()
	heap := watchHeap()
	if f.via == "nats" {
		r.tp, err = throughputNATS(ctx, st, gen, f)
	} else {
		r.tp, err = throughput(ctx, []string{st.IngestURL}, stackInserted(st), gen, f)
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
	r.peakHeap = heap()
	if f.memProfile != "" {
		if perr := writeHeapProfile(f.memProfile); perr != nil {
			return perr
		}
	}
	if f.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return err
	}
	r.rate = f.rate
	if r.rate == 0 {
		r.rate = int(r.tp.inserted / 2)
	}
	fmt.Printf("bench: latency phase: %d events/s for %s with probes\n", r.rate, f.rateFor)
	rec.phase("latency")
	if r.lat, err = latency(ctx, st.Database, ch, gen, send, r.rate, f.rateFor, f.perRequest); err != nil {
		return err
	}
	fmt.Println("bench: ClickHouse reference inserts on server 0")
	rec.phase("reference")
	if r.bulk, r.single, err = clickhouseReference(ctx, ch, st.Database); err != nil {
		return err
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
		return fmt.Errorf("report: %w", err)
	}
	if !f.cluster {
		return nil
	}
	// The cluster gets the machine to itself.
	_ = closeCH()
	if err := stopStack(); err != nil {
		return fmt.Errorf("stop the single-process stack: %w", err)
	}
	fmt.Println("bench: single-process stack stopped; starting the cluster")
	cl, err := benchCluster(ctx, f, gen, r.rate)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	single := benchFigures{accepted: r.tp.accepted, inserted: r.tp.inserted, rate: r.rate, lat: r.lat, heap: r.peakHeap, processes: 1}
	fmt.Print(compareReport(f, single, cl))
	return nil
}

// benchReport is what the phases measured.
type benchReport struct {
	flags        benchFlags
	tracing      string
	tp           throughputResult
	rate         int // events/s of the latency phase
	lat          latencyResult
	segment      throughputResult // --via segment: the load through /v1/batch
	bulk, single float64          // ClickHouse reference, rows/s
	peakHeap     uint64
}

// summary is the report the bench prints.
func (r benchReport) summary() string {
	f := r.flags
	return fmt.Sprintf(`
Surge bench (%d shards, %d ClickHouse servers, %d clients x %d events/request, via %s, JetStream sync %s, tracing %s)
  %-30s%10.0f events/s   (%d events in %s)
  inserted (queryable)          %10.0f events/s   (all %d rows in ClickHouse after %s)
  ingest-to-queryable at %d/s:  p50 %s  p99 %s  max %s  (%d probes)
  ClickHouse bulk insert        %10.0f rows/s     (10,000-row blocks, one connection)
  ClickHouse single-row insert  %10.0f rows/s     (bulk is %.0fx faster)
  peak Go heap, full load       %10.0f MiB        (all four services and the load generator, one process)
`, f.shards, f.servers, f.clients, f.perRequest, f.via, f.natsSync, r.tracing, map[string]string{"http": "accepted (HTTP 202)", "segment": "accepted (HTTP 202)", "nats": "accepted (JetStream PubAck)"}[f.via],
		r.tp.accepted, f.events, r.tp.acceptedIn.Round(time.Millisecond),
		r.tp.inserted, f.events, r.tp.insertedIn.Round(time.Millisecond),
		r.rate, r.lat.p50, r.lat.p99, r.lat.max, r.lat.n,
		r.bulk, r.single, r.bulk/r.single, float64(r.peakHeap)/(1<<20))
}

// discardExporter counts the spans it is given and drops them: the cost
// of tracing without the cost of a collector on the same two cores.
type discardExporter struct{ spans atomic.Int64 }

func (e *discardExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.spans.Add(int64(len(spans)))
	return nil
}

func (e *discardExporter) Shutdown(context.Context) error { return nil }
