package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/surge-events/surge/pkg/batch"
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
	trace      bool
}

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
	fs.StringVar(&f.via, "via", "http", "how events arrive: http (POST /v1/events) or nats (async JetStream publishes to surge.in.bench.bench)")
	fs.BoolVar(&f.trace, "trace", false, "trace the services as deployed: OpenTelemetry SDK, default parent-based 1% sampler, spans batched to an exporter that discards them")
	fs.StringVar(&f.memProfile, "memprofile", "", "write a heap profile taken at the end of the throughput phase to `file`")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write a CPU profile of the throughput phase (services and load generator) to `file`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if f.via != "http" && f.via != "nats" {
		return fmt.Errorf("--via must be http or nats, got %q", f.via)
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
	fmt.Printf("bench: starting stack (%d shards, %d ClickHouse servers, file-backed JetStream) in %s\n", f.shards, f.servers, f.dir)
	opts := stack.Options{Dir: f.dir, Shards: f.shards, ClickHouseServers: f.servers, NATSPort: -1,
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
	defer st.Stop()
	send := func(body []byte) bool {
		code, err := post(st.IngestURL, body)
		return err == nil && code == http.StatusAccepted
	}
	if f.via == "nats" {
		p, err := newNATSProducer(st)
		if err != nil {
			return err
		}
		defer p.close()
		send = p.send
	}

	ch, err := clickhouse.Open(&clickhouse.Options{Addr: st.ClickHouse.Addrs()[:1], Settings: clickhouse.Settings{"max_execution_time": 60}})
	if err != nil {
		return err
	}
	defer ch.Close()

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
	var tp throughputResult
	heap := watchHeap()
	if f.via == "nats" {
		tp, err = throughputNATS(ctx, st, gen, f)
	} else {
		tp, err = throughput(ctx, st, gen, f)
	}
	peakHeap := heap()
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
	rate := f.rate
	if rate == 0 {
		rate = int(tp.inserted / 2)
	}
	fmt.Printf("bench: latency phase: %d events/s for %s with probes\n", rate, f.rateFor)
	lat, err := latency(ctx, st, ch, gen, send, rate, f.rateFor, f.perRequest)
	if err != nil {
		return err
	}
	fmt.Println("bench: ClickHouse reference inserts on server 0")
	bulk, single, err := clickhouseReference(ctx, ch, st.Database)
	if err != nil {
		return err
	}

	if exported != nil {
		tracing = fmt.Sprintf("on at the default sampler, %d spans exported", exported.spans.Load())
	}
	fmt.Printf(`
Surge bench (%d shards, %d ClickHouse servers, %d clients x %d events/request, via %s, tracing %s)
  %-30s%10.0f events/s   (%d events in %s)
  inserted (queryable)          %10.0f events/s   (all %d rows in ClickHouse after %s)
  ingest-to-queryable at %d/s:  p50 %s  p99 %s  max %s  (%d probes)
  ClickHouse bulk insert        %10.0f rows/s     (10,000-row blocks, one connection)
  ClickHouse single-row insert  %10.0f rows/s     (bulk is %.0fx faster)
  peak Go heap, full load       %10.0f MiB        (all four services and the load generator, one process)
`, f.shards, f.servers, f.clients, f.perRequest, f.via, tracing, map[string]string{"http": "accepted (HTTP 202)", "nats": "accepted (JetStream PubAck)"}[f.via],
		tp.accepted, f.events, tp.acceptedIn.Round(time.Millisecond),
		tp.inserted, f.events, tp.insertedIn.Round(time.Millisecond),
		rate, lat.p50, lat.p99, lat.max, lat.n,
		bulk, single, bulk/single, float64(peakHeap)/(1<<20))
	return nil
}

// watchHeap samples the Go heap in use every 100 ms until the returned
// function is called, which returns the peak: what bounded queues and
// in-flight limits keep flat however hard the load pushes.
func watchHeap() (stop func() uint64) {
	done := make(chan struct{})
	peak := make(chan uint64, 1)
	go func() {
		var top uint64
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			top = max(top, ms.HeapInuse)
			select {
			case <-done:
				peak <- top
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		return <-peak
	}
}

// discardExporter counts the spans it is given and drops them: the cost
// of tracing without the cost of a collector on the same two cores.
type discardExporter struct{ spans atomic.Int64 }

func (e *discardExporter) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	e.spans.Add(int64(len(spans)))
	return nil
}

func (e *discardExporter) Shutdown(context.Context) error { return nil }

// generator makes request bodies of pseudo-random events. Bodies are made
// ahead so the load generator spends little of the machine's CPU; ingest
// gives every event its own ULID, so repeating a body repeats no event.
type generator struct {
	bodies [][]byte
	next   atomic.Uint64
}

func newGenerator(users, perRequest int) *generator {
	types := []string{"page_view", "click", "signup", "purchase", "scroll", "search"}
	r := rand.New(rand.NewPCG(1, 2))
	g := &generator{}
	for range 64 {
		var b bytes.Buffer
		b.WriteByte('[')
		for i := range perRequest {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"user_id":"user-%d","type":%q,"properties":{"path":"/p/%d","ref":"campaign-%d","ms":%d}}`,
				r.IntN(users), types[r.IntN(len(types))], r.IntN(1000), r.IntN(50), r.IntN(5000))
		}
		b.WriteByte(']')
		g.bodies = append(g.bodies, b.Bytes())
	}
	return g
}

func (g *generator) body() []byte { return g.bodies[g.next.Add(1)%uint64(len(g.bodies))] }

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}

func post(url string, body []byte) (int, error) {
	resp, err := client.Post(url+"/v1/events", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

type throughputResult struct {
	accepted, inserted     float64
	acceptedIn, insertedIn time.Duration
}

func throughput(ctx context.Context, st *stack.Stack, gen *generator, f benchFlags) (throughputResult, error) {
	requests := f.events / f.perRequest
	var sent atomic.Int64
	var failed atomic.Int64
	base := st.Inserted()
	start := time.Now()
	var wg sync.WaitGroup
	for range f.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= int64(requests) && ctx.Err() == nil {
				for {
					code, err := post(st.IngestURL, gen.body())
					if err == nil && code == http.StatusAccepted {
						break
					}
					failed.Add(1) // 503/429 under pressure: back off and resend
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		fmt.Printf("bench: %d requests were refused under pressure and resent\n", n)
	}
	return awaitInserted(ctx, st, start, base, requests*f.perRequest)
}

// awaitInserted waits, once every event of the throughput phase started
// at start was accepted, until the sink has inserted them all on top of
// base, and turns both moments into rates.
func awaitInserted(ctx context.Context, st *stack.Stack, start time.Time, base float64, events int) (throughputResult, error) {
	acceptedIn := time.Since(start)
	for st.Inserted() < base+float64(events) {
		if ctx.Err() != nil {
			return throughputResult{}, ctx.Err()
		}
		time.Sleep(10 * time.Millisecond)
	}
	insertedIn := time.Since(start)
	total := float64(events)
	return throughputResult{
		accepted: total / acceptedIn.Seconds(), acceptedIn: acceptedIn,
		inserted: total / insertedIn.Seconds(), insertedIn: insertedIn,
	}, nil
}

type latencyResult struct {
	p50, p99, max time.Duration
	n             int
}

// latency drives a steady rate and, every 100 ms, a probe event with a
// known id; it polls ClickHouse (through the Distributed table) for the
// probes and records when each becomes queryable.
func latency(ctx context.Context, st *stack.Stack, ch driver.Conn, gen *generator, send func([]byte) bool, rate int, d time.Duration, perRequest int) (latencyResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) * float64(perRequest) / float64(rate))
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		sem := make(chan struct{}, 32) // bounded concurrent requests
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				select {
				case sem <- struct{}{}:
					wg.Add(1)
					go func() {
						defer wg.Done()
						defer func() { <-sem }()
						_ = send(gen.body())
					}()
				default: // the stack is behind: skip rather than queue
				}
			}
		}
	}()

	var mu sync.Mutex
	sentAt := map[string]time.Time{}
	var lats []time.Duration
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				id := fmt.Sprintf("probe-%s-%d", run, n)
				body := fmt.Sprintf(`[{"event_id":%q,"user_id":"probe-%d","type":"bench_probe"}]`, id, n)
				mu.Lock()
				sentAt[id] = time.Now()
				mu.Unlock()
				if !send([]byte(body)) {
					mu.Lock()
					delete(sentAt, id)
					mu.Unlock()
				}
			}
		}
	}()

	seen := map[string]bool{}
	poll := func() error {
		rows, err := ch.Query(context.Background(), fmt.Sprintf("SELECT event_id FROM %s.events WHERE type = 'bench_probe' AND event_id LIKE 'probe-%s-%%'", st.Database, run))
		if err != nil {
			return err
		}
		defer rows.Close()
		now := time.Now()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			if seen[id] {
				continue
			}
			seen[id] = true
			mu.Lock()
			if t, ok := sentAt[id]; ok {
				lats = append(lats, now.Sub(t))
			}
			mu.Unlock()
		}
		return rows.Err()
	}
	for ctx.Err() == nil {
		if err := poll(); err != nil {
			return latencyResult{}, fmt.Errorf("poll probes: %w", err)
		}
		time.Sleep(25 * time.Millisecond)
	}
	wg.Wait()
	// Let the last probes land.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		pending := len(sentAt) - len(seen)
		mu.Unlock()
		if pending <= 0 || time.Now().After(deadline) {
			break
		}
		if err := poll(); err != nil {
			return latencyResult{}, err
		}
		time.Sleep(25 * time.Millisecond)
	}
	if len(lats) == 0 {
		return latencyResult{}, fmt.Errorf("no probe became queryable")
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	q := func(p float64) time.Duration { return lats[int(p*float64(len(lats)-1))].Round(time.Millisecond) }
	return latencyResult{p50: q(0.5), p99: q(0.99), max: lats[len(lats)-1].Round(time.Millisecond), n: len(lats)}, nil
}

// clickhouseReference measures ClickHouse alone on the same machine: bulk
// inserts of 10,000-row blocks and single-row inserts, both through the
// driver's batch API over one connection.
func clickhouseReference(ctx context.Context, ch driver.Conn, db string) (bulk, single float64, err error) {
	table := db + ".bench_reference"
	if err := ch.Exec(ctx, "DROP TABLE IF EXISTS "+table); err != nil {
		return 0, 0, err
	}
	if err := ch.Exec(ctx, "CREATE TABLE "+table+" AS "+db+".events_local"); err != nil {
		return 0, 0, err
	}
	defer func() { _ = ch.Exec(context.Background(), "DROP TABLE IF EXISTS "+table) }()

	b := &batch.Batch{}
	now := time.Now().UnixMicro()
	for i := range 10_000 {
		b.EventID = append(b.EventID, fmt.Sprintf("ref-%d", i))
		b.Tenant = append(b.Tenant, "default")
		b.UserID = append(b.UserID, fmt.Sprintf("user-%d", i%1000))
		b.Type = append(b.Type, "page_view")
		b.TS = append(b.TS, now)
		b.ReceivedAt = append(b.ReceivedAt, now)
		b.Properties = append(b.Properties, `{"path":"/p/1","ref":"campaign-1","ms":100}`)
		b.Seq = append(b.Seq, uint64(i))
	}
	insert := func(from, to int) error {
		pb, err := ch.PrepareBatch(ctx, "INSERT INTO "+table+" (event_id, tenant, user_id, type, ts, received_at, properties, shard, seq)")
		if err != nil {
			return err
		}
		defer pb.Abort()
		shard := make([]uint16, to-from)
		cols := []any{b.EventID[from:to], b.Tenant[from:to], b.UserID[from:to], b.Type[from:to],
			batch.Times(b.TS[from:to]), batch.Times(b.ReceivedAt[from:to]), b.Properties[from:to], shard, b.Seq[from:to]}
		for i, c := range cols {
			if err := pb.Column(i).Append(c); err != nil {
				return err
			}
		}
		return pb.Send()
	}
	start := time.Now()
	const blocks = 20
	for range blocks {
		if err := insert(0, 10_000); err != nil {
			return 0, 0, fmt.Errorf("bulk insert: %w", err)
		}
	}
	bulk = float64(blocks*10_000) / time.Since(start).Seconds()

	start = time.Now()
	n := 0
	for time.Since(start) < 3*time.Second {
		if err := insert(n%10_000, n%10_000+1); err != nil {
			return 0, 0, fmt.Errorf("single-row insert: %w", err)
		}
		n++
	}
	single = float64(n) / time.Since(start).Seconds()
	return bulk, single, nil
}

func writeHeapProfile(path string) error {
	pf, err := os.Create(path)
	if err != nil {
		return err
	}
	defer pf.Close()
	return pprof.Lookup("heap").WriteTo(pf, 0)
}
