package bench

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/procfs"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/tools/stack"
)

// `surge bench --typed both` runs the bench once with typed columns off
// and once inferred, each on a fresh stack, and prints the two side by
// side: what flattening properties into typed columns costs end to end.

// typedModes turns --typed into the runs it asks for. Unset, it is both
// when the events carry a profile's properties (what the flag is for)
// and otherwise nil: one run with the schema section's default, the
// stack as a deployment gets it. --cluster starts the cluster with the
// services' defaults, so it takes no --typed.
func typedModes(typed, properties string, cluster bool) ([]schema.Mode, error) {
	if typed == "" {
		if properties != "" && !cluster {
			return []schema.Mode{schema.Off, schema.Infer}, nil
		}
		return nil, nil
	}
	if cluster {
		return nil, fmt.Errorf("--cluster runs the schema section's default (%s): drop --typed", schema.DefaultConfig().Mode)
	}
	switch typed {
	case string(schema.Off):
		return []schema.Mode{schema.Off}, nil
	case string(schema.Infer):
		return []schema.Mode{schema.Infer}, nil
	case "both":
		return []schema.Mode{schema.Off, schema.Infer}, nil
	}
	return nil, fmt.Errorf("--typed must be off, infer or both, got %q", typed)
}

// modeDir is a mode's folder in dir when the bench runs several modes:
// dir/MODE; "" stays "".
func modeDir(dir string, mode schema.Mode) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, string(mode))
}

// modeFile is a mode's file when the bench runs several modes:
// file-MODE.ext; "" stays "".
func modeFile(file string, mode schema.Mode) string { return suffixed(file, string(mode)) }

// suffixed is file-suffix.ext; "" stays "".
func suffixed(file, suffix string) string {
	if file == "" {
		return ""
	}
	ext := filepath.Ext(file)
	return strings.TrimSuffix(file, ext) + "-" + suffix + ext
}

// runCost is what the throughput phase cost: CPU time of the bench
// process and of ClickHouse, and the bytes of the batches published.
type runCost struct {
	events              int
	process, clickhouse float64 // CPU seconds
	batchBytes          float64 // encoded bytes of the batches the batcher published
	batchRows           float64 // rows in those batches
	batches             float64 // how many
}

func perMillion(v float64, events int) float64 {
	if events == 0 {
		return 0
	}
	return v / float64(events) * 1e6
}

// processPerM is the bench process's CPU seconds per 1M events.
func (c runCost) processPerM() float64 { return perMillion(c.process, c.events) }

// clickhousePerM is ClickHouse's CPU seconds per 1M events.
func (c runCost) clickhousePerM() float64 { return perMillion(c.clickhouse, c.events) }

// batchBytesPerEvent is BATCHES bytes per event.
func (c runCost) batchBytesPerEvent() float64 {
	if c.batchRows == 0 {
		return 0
	}
	return c.batchBytes / c.batchRows
}

// rowsPerBatch is the rows of a published batch on average.
func (c runCost) rowsPerBatch() float64 {
	if c.batches == 0 {
		return 0
	}
	return c.batchRows / c.batches
}

// startCost reads the counters now; the returned function reads them
// again and returns the difference, for events events.
func startCost(st *stack.Stack) func(events int) runCost {
	p0, c0 := processCPU(), clickhouseCPU(st.ClickHouse)
	b0, r0, n0 := batchesPublished(st)
	return func(events int) runCost {
		p, c := processCPU(), clickhouseCPU(st.ClickHouse)
		b, r, n := batchesPublished(st)
		return runCost{events: events, process: p - p0, clickhouse: c - c0, batchBytes: b - b0, batchRows: r - r0, batches: n - n0}
	}
}

// processCPU is the bench process's CPU seconds so far, from /proc; 0
// where it cannot be read.
func processCPU() float64 {
	p, err := procfs.Self()
	if err != nil {
		return 0
	}
	s, err := p.Stat()
	if err != nil {
		return 0
	}
	return s.CPUTime()
}

// batchesPublished is the encoded bytes, the rows and the number of the
// batches the stack's batcher has published (surge_batcher_batch_bytes's
// sum and count, and surge_batcher_rows_total).
func batchesPublished(st *stack.Stack) (bytes, rows, batches float64) {
	p := st.Part("batcher")
	if p == nil {
		return 0, 0, 0
	}
	series, _ := stack.Series(p.Registry, "surge_batcher_batch_bytes")
	for _, m := range series {
		bytes += m.GetHistogram().GetSampleSum()
		batches += float64(m.GetHistogram().GetSampleCount())
	}
	return bytes, stack.Sum(p.Registry, "surge_batcher_rows_total"), batches
}

// loadAverage is the machine's 1-minute load average; 0 where
// /proc/loadavg cannot be read.
func loadAverage() float64 {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return 0
	}
	return l.Load1
}

// typedColumns counts the typed property columns of events_local on the
// server ch is connected to.
func typedColumns(ctx context.Context, ch driver.Conn, db string) (int, error) {
	var n uint64
	err := ch.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = 'events_local' AND startsWith(name, 'p_')", db).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count typed columns: %w", err)
	}
	return int(n), nil
}

// benchTyped runs typed columns off and inferred on four fresh stacks
// (offOn: off, infer, infer, off) and prints each mode averaged side by
// side, then the queries after each inferred run.
func benchTyped(ctx context.Context, f benchFlags, gen *generator) error {
	offs, ons, err := runOffOn(ctx, f, gen, offOn{name: "typed", run: func(on bool) stackRun {
		cfg := schema.DefaultConfig()
		cfg.Mode = map[bool]schema.Mode{false: schema.Off, true: schema.Infer}[on]
		return stackRun{schema: &cfg}
	}})
	if err != nil {
		return err
	}
	all := []benchReport{offs[0], ons[0], ons[1], offs[1]}
	fmt.Print(typedReport(f, gen, []benchReport{meanRuns(offs), meanRuns(ons)}, all))
	for _, r := range all {
		if len(r.queries.queries) > 0 {
			fmt.Print(queryReport(r))
		}
	}
	return nil
}

// meanRuns is one mode's runs as one: rates, latencies, heap (the
// process's and each owner's peak) and load averaged, CPU (each owner's
// too) and BATCHES bytes pooled over all their events.
func meanRuns(runs []benchReport) benchReport {
	m := runs[0]
	m.tp, m.rate, m.lat, m.cost, m.peakHeap, m.loadAvg, m.store = throughputResult{}, 0, latencyResult{}, runCost{}, 0, 0, storage{}
	m.cpu = map[string]float64{}
	m.heap = heapPeaks{owners: map[string]uint64{}}
	n := float64(len(runs))
	for _, r := range runs {
		for k, v := range r.cpu {
			m.cpu[k] += v
		}
		m.heap.inuse += uint64(float64(r.heap.inuse) / n)
		for k, v := range r.heap.owners {
			m.heap.owners[k] += uint64(float64(v) / n)
		}
		m.tp.accepted += r.tp.accepted / n
		m.tp.inserted += r.tp.inserted / n
		m.rate += int(float64(r.rate) / n)
		m.lat.p50 += time.Duration(float64(r.lat.p50) / n)
		m.lat.p99 += time.Duration(float64(r.lat.p99) / n)
		m.lat.n += r.lat.n
		m.cost.events += r.cost.events
		m.cost.process += r.cost.process
		m.cost.clickhouse += r.cost.clickhouse
		m.cost.batchBytes += r.cost.batchBytes
		m.cost.batchRows += r.cost.batchRows
		m.cost.batches += r.cost.batches
		m.peakHeap += uint64(float64(r.peakHeap) / n)
		m.loadAvg += r.loadAvg / n
		m.columns = max(m.columns, r.columns)
		m.store.add(r.store, n)
	}
	return m
}

// typedReport is each typed columns mode side by side (runs, one per
// mode, each the mean of its runs), with the last mode's figures over the
// first's, after the inserted rate of every run in the order they ran
// (all).
func typedReport(f benchFlags, gen *generator, runs, all []benchReport) string {
	var b strings.Builder
	first, last := runs[0], runs[len(runs)-1]
	ratio := func(v func(benchReport) float64) string {
		if v(first) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", v(last)/v(first))
	}
	var modes []string
	for _, r := range runs {
		modes = append(modes, string(r.mode))
	}
	row := func(label string, value func(benchReport) string, ratio string) {
		fmt.Fprintf(&b, "  %-30s", label)
		for _, r := range runs {
			fmt.Fprintf(&b, " %20s", value(r))
		}
		fmt.Fprintf(&b, " %12s\n", ratio)
	}
	accepted := map[string]string{"http": "accepted (HTTP 202)", "segment": "accepted (HTTP 202)", "nats": "accepted (JetStream PubAck)"}[f.via]
	fmt.Fprintf(&b, "\nSurge bench, typed columns %s (properties %s; the same load in each: %d events, %d clients x %d events/request via %s, %d shards, %d ClickHouse servers on %s)\n",
		strings.Join(modes, " vs "), f.properties, f.events/f.perRequest*f.perRequest, f.clients, f.perRequest, f.via, f.shards, f.servers, runs[0].chFS)
	for i, r := range all {
		fmt.Fprintf(&b, "  run %d %-6s inserted %.0f events/s, accepted %.0f events/s, p99 at half rate %s\n", i+1, r.mode, r.tp.inserted, r.tp.accepted, r.lat.p99)
	}
	if len(all) == 4 { // off, on, on, off
		for _, l := range spreadLines([]benchReport{all[0], all[3]}, all[1:3], string(first.mode), string(last.mode)) {
			fmt.Fprintf(&b, "  %s\n", l)
		}
	}
	row("", func(r benchReport) string { return string(r.mode) }, string(last.mode)+"/"+string(first.mode))
	row(accepted, func(r benchReport) string { return fmt.Sprintf("%.0f events/s", r.tp.accepted) }, ratio(func(r benchReport) float64 { return r.tp.accepted }))
	row("inserted (queryable)", func(r benchReport) string { return fmt.Sprintf("%.0f events/s", r.tp.inserted) }, ratio(func(r benchReport) float64 { return r.tp.inserted }))
	row("ingest-to-queryable rate", func(r benchReport) string { return fmt.Sprintf("%d events/s", r.rate) }, "")
	row("  p50", func(r benchReport) string { return r.lat.p50.String() }, ratio(func(r benchReport) float64 { return r.lat.p50.Seconds() }))
	row("  p99", func(r benchReport) string { return r.lat.p99.String() }, ratio(func(r benchReport) float64 { return r.lat.p99.Seconds() }))
	row("  probes", func(r benchReport) string { return fmt.Sprint(r.lat.n) }, "")
	row("CPU per 1M events, bench", func(r benchReport) string { return fmt.Sprintf("%.1f s", r.cost.processPerM()) }, ratio(func(r benchReport) float64 { return r.cost.processPerM() }))
	for _, k := range ownersOf(runs, func(r benchReport) []string { return slices.Collect(maps.Keys(r.cpu)) }, true) {
		perM := func(r benchReport) float64 { return perMillion(r.cpu[k], r.cost.events) }
		row("  "+k, func(r benchReport) string { return fmt.Sprintf("%.2f s", perM(r)) }, ratio(perM))
	}
	row("CPU per 1M events, ClickHouse", func(r benchReport) string { return fmt.Sprintf("%.1f s", r.cost.clickhousePerM()) }, ratio(func(r benchReport) float64 { return r.cost.clickhousePerM() }))
	row("peak Go heap, full load", func(r benchReport) string { return fmt.Sprintf("%.0f MiB", mib(r.peakHeap)) }, ratio(func(r benchReport) float64 { return float64(r.peakHeap) }))
	for _, k := range ownersOf(runs, func(r benchReport) []string { return slices.Collect(maps.Keys(r.heap.owners)) }, false) {
		peak := func(r benchReport) float64 { return float64(r.heap.owners[k]) }
		row("  "+k, func(r benchReport) string { return fmt.Sprintf("%.1f MiB", mib(uint64(peak(r)))) }, ratio(peak))
	}
	row("BATCHES bytes per event", func(r benchReport) string { return fmt.Sprintf("%.0f", r.cost.batchBytesPerEvent()) }, ratio(func(r benchReport) float64 { return r.cost.batchBytesPerEvent() }))
	row("rows per batch", func(r benchReport) string { return fmt.Sprintf("%.0f", r.cost.rowsPerBatch()) }, ratio(func(r benchReport) float64 { return r.cost.rowsPerBatch() }))
	row("typed columns in events_local", func(r benchReport) string { return fmt.Sprint(r.columns) }, "")
	row("sink inserts, on the server: p50", func(r benchReport) string { return fmtMillis(r.store.insertP50) }, ratio(func(r benchReport) float64 { return r.store.insertP50.Seconds() }))
	row("  p99", func(r benchReport) string { return fmtMillis(r.store.insertP99) }, ratio(func(r benchReport) float64 { return r.store.insertP99.Seconds() }))
	row("  rows each", func(r benchReport) string { return fmt.Sprintf("%.0f", r.store.rowsPerInsert()) }, ratio(func(r benchReport) float64 { return r.store.rowsPerInsert() }))
	row("parts after the run's merges", func(r benchReport) string { return fmt.Sprintf("%.1f", r.store.parts) }, ratio(func(r benchReport) float64 { return r.store.parts }))
	row("files a part", func(r benchReport) string { return fmt.Sprint(r.store.filesPerPart) }, ratio(func(r benchReport) float64 { return float64(r.store.filesPerPart) }))
	row("on disk, bytes an event", func(r benchReport) string { return fmt.Sprintf("%.1f", r.store.perEvent(r.store.bytes)) }, ratio(func(r benchReport) float64 { return r.store.perEvent(r.store.bytes) }))
	row("  properties column", func(r benchReport) string { return fmt.Sprintf("%.1f", r.store.perEvent(r.store.properties)) }, ratio(func(r benchReport) float64 { return r.store.perEvent(r.store.properties) }))
	row("  typed columns", func(r benchReport) string { return fmt.Sprintf("%.1f", r.store.perEvent(r.store.typed)) }, "")
	row("load average before the run", func(r benchReport) string { return fmt.Sprintf("%.2f", r.loadAvg) }, "")

	rate := "half each mode's own inserted rate"
	if f.rate != 0 {
		rate = fmt.Sprintf("%d events/s (--rate)", f.rate)
	}
	def := schema.DefaultConfig()
	fmt.Fprintf(&b, "  each run on a fresh stack (empty data folder and table), in the order above: a stack runs slower after another, and\n")
	fmt.Fprintf(&b, "  running the modes there and back cancels that; each mode's runs averaged (CPU and bytes pooled); latency phase at %s\n", rate)
	fmt.Fprintf(&b, "  CPU: seconds used in the throughput phase, from /proc. The bench process runs the four services, the embedded NATS\n")
	fmt.Fprintf(&b, "       server and the load generator; the rows under it split it by owner from a CPU profile of the phase (the\n")
	fmt.Fprintf(&b, "       runtime's own work and the clients' goroutines are the rest). ClickHouse: every clickhouse-server process\n")
	fmt.Fprintf(&b, "  peak Go heap: the bench process's HeapInuse, the load generator's %.0f MiB of request bodies included; the rows\n", float64(gen.size())/(1<<20))
	fmt.Fprintf(&b, "       under it are each service's peak live heap (its own peak, from the sampled allocation profile), averaged\n")
	fmt.Fprintf(&b, "  BATCHES bytes per event: encoded bytes of the batches the batcher published, over their rows; rows per batch: theirs\n")
	fmt.Fprintf(&b, "  sink inserts: the time each took on its server (system.query_log), throughput phase; parts: active ones of events_local\n")
	fmt.Fprintf(&b, "       once the run's merges ended; on disk: events_local after OPTIMIZE FINAL, compressed columns, over its rows\n")
	fmt.Fprintf(&b, "  typed columns: the schema section's limits are %d new columns an hour and %d in all\n", def.MaxNewColumnsPerHour, def.MaxColumns)
	return trimLines(b.String())
}

// ownersOf is the services that any of runs has a figure for (keys), in
// the report's order, and the embedded NATS server's too when withNATS.
func ownersOf(runs []benchReport, keys func(benchReport) []string, withNATS bool) []string {
	seen := map[string]bool{}
	for _, r := range runs {
		for _, k := range keys(r) {
			if strings.HasPrefix(k, serviceOwnerPref) || withNATS && k == ownerNATS {
				seen[k] = true
			}
		}
	}
	return ownerOrder(seen)
}

// trimLines drops the spaces at the end of each line.
func trimLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// fmtMillis prints a query time in milliseconds, to a tenth.
func fmtMillis(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}
