package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/procfs"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/tools/stack"
)

// The report's sampler looks at the run every sampleEvery; it keeps at
// most maxSamples looks, halving them (and doubling the interval) when a
// long run reaches that many, so a run of any length costs bounded memory.
const (
	sampleEvery = 200 * time.Millisecond
	maxSamples  = 4096
)

// runSample is one look at the run.
type runSample struct {
	// T is seconds since the throughput phase started.
	T float64 `json:"t_s"`
	// Accepted is events the load generator had accepted (HTTP 202 or
	// JetStream PubAck), both phases, probes included.
	Accepted int64 `json:"accepted"`
	// Inserted is rows the sink had inserted into ClickHouse.
	Inserted float64 `json:"inserted"`
	// CPUSeconds and HeapInuseBytes are the bench process's
	// process_cpu_seconds_total and go_memstats_heap_inuse_bytes: the
	// figures a service's /metrics shows, here for the one process that
	// runs all four services and the load generator.
	CPUSeconds     float64 `json:"cpu_seconds"`
	HeapInuseBytes float64 `json:"heap_inuse_bytes"`
	// ClickHouseCPUSeconds is the CPU time of every clickhouse-server
	// process, from /proc.
	ClickHouseCPUSeconds float64 `json:"clickhouse_cpu_seconds"`
	// MachineCPUSeconds is the CPU time every process of the machine
	// used, from /proc/stat: on a shared machine, what the bench did
	// not get.
	MachineCPUSeconds float64 `json:"machine_cpu_seconds"`
}

// runPhase is when one phase of the bench ran, in seconds since the
// throughput phase started.
type runPhase struct {
	Name  string  `json:"name"`
	Start float64 `json:"start_s"`
	End   float64 `json:"end_s"`
}

// shardRows is what the sink inserted for one shard.
type shardRows struct {
	Shard int     `json:"shard"`
	Rows  float64 `json:"rows"`
}

// runRecord samples a single-process bench run for `--report`: counters
// every sampleEvery from the start of the throughput phase to the end of
// the ClickHouse reference, the phases' boundaries and the rows of each
// shard. A nil *runRecord (no --report) does nothing.
type runRecord struct {
	dir   string
	st    *stack.Stack
	start time.Time
	look  func() runSample

	phases    []runPhase
	rows      []shardRows
	acceptedN int64 // load generator's accepted events when the throughput phase started

	done    chan struct{}
	samples chan []runSample
	stopped []runSample
}

// newRunRecord starts sampling st and gen when dir is set; nil otherwise.
// The clock and the throughput phase start now: call it just before.
func newRunRecord(dir string, st *stack.Stack, gen *generator) *runRecord {
	if dir == "" {
		return nil
	}
	// The Go and process collectors every service registers: reading them
	// here reads the same process as any of the four services' /metrics.
	proc := prometheus.NewRegistry()
	proc.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rec := &runRecord{dir: dir, st: st, start: time.Now(), acceptedN: gen.accepted.Load(),
		phases: []runPhase{{Name: "throughput"}},
		done:   make(chan struct{}), samples: make(chan []runSample, 1)}
	rec.look = func() runSample {
		// The clock and the CPU counters first and together: a rate
		// divides one by the other, and a busy machine can stall a look.
		s := runSample{
			T:                    time.Since(rec.start).Seconds(),
			MachineCPUSeconds:    machineCPU(),
			ClickHouseCPUSeconds: clickhouseCPU(st.ClickHouse),
		}
		s.CPUSeconds, s.HeapInuseBytes = processStats(proc)
		s.Accepted = gen.accepted.Load() - rec.acceptedN
		s.Inserted = st.Inserted()
		return s
	}
	go rec.sample(rec.done, rec.samples)
	return rec
}

// processStats reads process_cpu_seconds_total and heapMetric from one
// gather of g.
func processStats(g prometheus.Gatherer) (cpu, heap float64) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, 0
	}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		switch m := mf.GetMetric()[0]; mf.GetName() {
		case "process_cpu_seconds_total":
			cpu = m.GetCounter().GetValue()
		case heapMetric:
			heap = m.GetGauge().GetValue()
		}
	}
	return cpu, heap
}

// clickhouseCPU sums the CPU seconds of the cluster's clickhouse-server
// processes; a process gone leaves its share out.
func clickhouseCPU(c *chserver.Cluster) float64 {
	var total float64
	for _, s := range c.Servers {
		p, err := procfs.NewProc(s.PID())
		if err != nil {
			continue
		}
		if stat, err := p.Stat(); err == nil {
			total += stat.CPUTime()
		}
	}
	return total
}

// machineCPU is the CPU time all processes used (neither idle nor
// waiting for I/O); 0 where /proc/stat cannot be read.
func machineCPU() float64 {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0
	}
	st, err := fs.Stat()
	if err != nil {
		return 0
	}
	c := st.CPUTotal
	return c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal
}

// sample runs until done closes: it owns the samples and hands them
// over once, on out.
func (rec *runRecord) sample(done <-chan struct{}, out chan<- []runSample) {
	every := sampleEvery
	tick := time.NewTicker(every)
	defer tick.Stop()
	var samples []runSample
	for {
		samples = append(samples, rec.look())
		if len(samples) == maxSamples {
			samples = thin(samples)
			every *= 2
			tick.Reset(every)
		}
		select {
		case <-done:
			out <- samples
			return
		case <-tick.C:
		}
	}
}

// thin keeps every second sample, the last one included.
func thin(s []runSample) []runSample {
	var out []runSample
	for i := len(s) - 1; i >= 0; i -= 2 {
		out = append(out, s[i])
	}
	slices.Reverse(out)
	return out
}

// stop ends the sampling, taking a last look; later calls return the
// same samples.
func (rec *runRecord) stop() []runSample {
	if rec == nil {
		return nil
	}
	if rec.stopped == nil { // never empty once stopped: the last look is in
		close(rec.done)
		rec.stopped = append(<-rec.samples, rec.look())
	}
	return rec.stopped
}

// phase records that the named phase runs from now on, ending the one
// before.
func (rec *runRecord) phase(name string) {
	if rec == nil {
		return
	}
	now := time.Since(rec.start).Seconds()
	rec.endPhase(now)
	rec.phases = append(rec.phases, runPhase{Name: name, Start: now})
}

func (rec *runRecord) endPhase(at float64) {
	if n := len(rec.phases); n > 0 && rec.phases[n-1].End == 0 {
		rec.phases[n-1].End = at
	}
}

// throughputDone records the throughput phase's end, when its last row
// was inserted, and the rows each shard inserted in it.
func (rec *runRecord) throughputDone(tp throughputResult) error {
	if rec == nil {
		return nil
	}
	rec.endPhase(tp.insertedIn.Seconds())
	rows, err := sinkShardRows(rec.st.Part("sink").Registry)
	rec.rows = rows
	return err
}

// sinkShardRows reads surge_sink_rows_inserted_total of each shard.
func sinkShardRows(g prometheus.Gatherer) ([]shardRows, error) {
	series, err := stack.Series(g, "surge_sink_rows_inserted_total")
	if err != nil {
		return nil, err
	}
	var rows []shardRows
	for _, m := range series {
		for _, l := range m.GetLabel() {
			if l.GetName() != "shard" {
				continue
			}
			k, err := strconv.Atoi(l.GetValue())
			if err != nil {
				return nil, fmt.Errorf("shard label %q: %w", l.GetValue(), err)
			}
			rows = append(rows, shardRows{Shard: k, Rows: m.GetCounter().GetValue()})
		}
	}
	slices.SortFunc(rows, func(a, b shardRows) int { return cmp.Compare(a.Shard, b.Shard) })
	return rows, nil
}

// probes turns the latency phase's probes into report figures, in the
// order sent.
func (rec *runRecord) probes(ps []probe) []reportProbe {
	out := make([]reportProbe, 0, len(ps))
	for _, p := range ps {
		out = append(out, reportProbe{SentS: p.sent.Sub(rec.start).Seconds(), LatencyMS: float64(p.latency) / float64(time.Millisecond)})
	}
	slices.SortFunc(out, func(a, b reportProbe) int { return cmp.Compare(a.SentS, b.SentS) })
	return out
}

// reportData is report.json: the figures the bench printed, the setup
// and every sample the plots are drawn from.
type reportData struct {
	// Summary is the report the bench printed, verbatim.
	Summary    string           `json:"summary"`
	Setup      reportSetup      `json:"setup"`
	Throughput reportThroughput `json:"throughput"`
	Latency    reportLatency    `json:"latency"`
	Reference  reportReference  `json:"clickhouse_reference"`
	// SinkLeg is the sink alone on a full BATCHES; absent when not run.
	SinkLeg *reportSinkLeg `json:"sink_leg,omitempty"`
	// PeakHeapBytes is the Go heap's peak during the throughput phase, as
	// printed; HeapByOwner is each owner's peak live heap (heap.go).
	PeakHeapBytes uint64            `json:"peak_heap_bytes"`
	HeapByOwner   map[string]uint64 `json:"peak_live_heap_by_owner_bytes,omitempty"`
	// CPUByOwner is each owner's CPU seconds in the throughput phase,
	// from its CPU profile (cpu.go).
	CPUByOwner map[string]float64 `json:"cpu_seconds_by_owner,omitempty"`
	Phases     []runPhase         `json:"phases"`
	Samples    []runSample        `json:"samples"`
}

type reportSetup struct {
	Started           time.Time `json:"started"`
	Events            int       `json:"events"`
	PerRequest        int       `json:"per_request"`
	Clients           int       `json:"clients"`
	Users             int       `json:"users"`
	Shards            int       `json:"shards"`
	ClickHouseServers int       `json:"clickhouse_servers"`
	Via               string    `json:"via"`
	NATSSync          string    `json:"nats_sync"`
	Tracing           string    `json:"tracing"`
	CPUs              int       `json:"cpus"`
	GOOS              string    `json:"goos"`
	GOARCH            string    `json:"goarch"`
	GoVersion         string    `json:"go_version"`
}

type reportThroughput struct {
	// Events is what the throughput phase sent, every one accepted and inserted.
	Events            int         `json:"events"`
	AcceptedPerSecond float64     `json:"accepted_events_per_s"`
	AcceptedSeconds   float64     `json:"accepted_in_s"`
	InsertedPerSecond float64     `json:"inserted_events_per_s"`
	InsertedSeconds   float64     `json:"inserted_in_s"`
	RowsPerShard      []shardRows `json:"rows_per_shard"`
}

type reportLatency struct {
	// Rate is the steady load of the phase, events/s.
	Rate      int     `json:"rate"`
	DurationS float64 `json:"duration_s"`
	Probes    int     `json:"probes"`
	P50Millis int64   `json:"p50_ms"`
	P99Millis int64   `json:"p99_ms"`
	MaxMillis int64   `json:"max_ms"`
	// Probes lists every probe that became queryable, in the order sent.
	ProbesSeen []reportProbe `json:"probe_latencies"`
}

// reportProbe is one probe: sent SentS seconds after the throughput
// phase started, queryable LatencyMS later.
type reportProbe struct {
	SentS     float64 `json:"sent_s"`
	LatencyMS float64 `json:"latency_ms"`
}

type reportSinkLeg struct {
	Rows                int     `json:"rows"`
	SinkRowsPerSecond   float64 `json:"sink_rows_per_s"`
	SinkSeconds         float64 `json:"sink_in_s"`
	SinkStartupSeconds  float64 `json:"sink_startup_s"`
	UpstreamPerSecond   float64 `json:"ingest_to_batches_events_per_s"`
	SinkShareOfBulk     float64 `json:"sink_share_of_bulk"`
	EndToEndShareOfBulk float64 `json:"end_to_end_share_of_bulk"`
}

type reportReference struct {
	// BulkRowsPerSecond inserts the run's own rows again; the sink leg's
	// and the whole path's shares are taken of it.
	BulkRowsPerSecond float64 `json:"bulk_rows_per_s"`
	// RepeatedBlockRowsPerSecond inserts one synthetic block again and
	// again, the reference of earlier runs.
	RepeatedBlockRowsPerSecond float64 `json:"repeated_block_rows_per_s"`
	SingleRowRowsPerSecond     float64 `json:"single_row_rows_per_s"`
}

// write ends the sampling and writes report.json, report.html and each
// plot as SVG and PNG files of its own into the record's folder.
func (rec *runRecord) write(r benchReport) error {
	if rec == nil {
		return nil
	}
	f := r.flags
	d := reportData{
		Summary: r.summary(),
		Setup: reportSetup{
			Started: rec.start.UTC().Truncate(time.Second), Events: f.events, PerRequest: f.perRequest, Clients: f.clients,
			Users: f.users, Shards: f.shards, ClickHouseServers: f.servers, Via: f.via, NATSSync: string(f.natsSync),
			Tracing: r.tracing, CPUs: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, GoVersion: runtime.Version(),
		},
		Throughput: reportThroughput{
			Events:            f.events / f.perRequest * f.perRequest,
			AcceptedPerSecond: r.tp.accepted, AcceptedSeconds: r.tp.acceptedIn.Seconds(),
			InsertedPerSecond: r.tp.inserted, InsertedSeconds: r.tp.insertedIn.Seconds(),
			RowsPerShard: rec.rows,
		},
		Latency: reportLatency{
			Rate: r.rate, DurationS: f.rateFor.Seconds(), Probes: r.lat.n,
			P50Millis: r.lat.p50.Milliseconds(), P99Millis: r.lat.p99.Milliseconds(), MaxMillis: r.lat.max.Milliseconds(),
			ProbesSeen: rec.probes(r.lat.probes),
		},
		Reference:     reportReference{BulkRowsPerSecond: r.ref.bulk, RepeatedBlockRowsPerSecond: r.ref.repeated, SingleRowRowsPerSecond: r.ref.single},
		PeakHeapBytes: r.peakHeap,
		HeapByOwner:   r.heap.owners,
		CPUByOwner:    r.cpu,
	}
	if r.leg.events > 0 && r.ref.bulk > 0 {
		d.SinkLeg = &reportSinkLeg{
			Rows: r.leg.events, SinkRowsPerSecond: r.leg.sink, SinkSeconds: r.leg.sinkIn.Seconds(),
			SinkStartupSeconds: r.leg.startup.Seconds(), UpstreamPerSecond: r.leg.upstream,
			SinkShareOfBulk: r.leg.sink / r.ref.bulk, EndToEndShareOfBulk: r.tp.inserted / r.ref.bulk,
		}
	}
	d.Samples = rec.stop()
	rec.endPhase(d.Samples[len(d.Samples)-1].T)
	d.Phases = rec.phases

	if err := os.MkdirAll(rec.dir, 0o755); err != nil {
		return fmt.Errorf("report folder: %w", err)
	}
	js, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rec.dir, "report.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report.json: %w", err)
	}
	figs, err := reportFigures(d)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	for _, fig := range figs {
		if err := os.WriteFile(filepath.Join(rec.dir, fig.ID+".svg"), fig.svg, 0o644); err != nil {
			return fmt.Errorf("write %s.svg: %w", fig.ID, err)
		}
		if err := os.WriteFile(filepath.Join(rec.dir, fig.ID+".png"), fig.png, 0o644); err != nil {
			return fmt.Errorf("write %s.png: %w", fig.ID, err)
		}
	}
	page, err := reportHTML(d, figs)
	if err != nil {
		return err
	}
	path := filepath.Join(rec.dir, "report.html")
	if err := os.WriteFile(path, page, 0o644); err != nil {
		return fmt.Errorf("write report.html: %w", err)
	}
	fmt.Printf("bench: report in %s (raw figures in report.json)\n", path)
	return nil
}
