package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/surge-events/surge/pkg/schema"
)

func TestParseBenchFlagsTyped(t *testing.T) {
	t.Setenv("SURGE_NATS_SYNC", "")
	both := []schema.Mode{schema.Off, schema.Infer}
	for _, tc := range []struct {
		name       string
		args       []string
		properties string
		modes      []schema.Mode
		err        string
	}{
		{name: "neither: one run with the schema section's default", args: nil},
		{name: "a profile runs both modes", args: []string{"--properties", "p20"}, properties: "p20", modes: both},
		{name: "a profile and one mode", args: []string{"--properties", "hostile", "--typed", "infer"}, properties: "hostile", modes: []schema.Mode{schema.Infer}},
		{name: "both modes of the bench's own properties", args: []string{"--typed", "both"}, modes: both},
		{name: "off alone", args: []string{"--typed", "off"}, modes: []schema.Mode{schema.Off}},
		{name: "the cluster runs its default", args: []string{"--cluster", "--properties", "nested"}, properties: "nested"},
		{name: "declared is not a bench mode", args: []string{"--typed", "declared"}, err: `--typed must be off, infer or both, got "declared"`},
		{name: "unknown profile", args: []string{"--properties", "p21"}, err: `--properties must be one of p20, sparse200, nested, hostile, got "p21"`},
		{name: "the cluster takes no --typed", args: []string{"--cluster", "--typed", "off"}, err: "--cluster runs the schema section's default"},
		{name: "other flags still checked", args: []string{"--via", "mqtt", "--typed", "both"}, err: "--via must be http, nats or segment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseBenchFlags(tc.args)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.properties, f.properties)
			assert.Equal(t, tc.modes, f.modes)
			assert.Equal(t, 1_000_000, f.events, "the other defaults are unchanged")
		})
	}
}

func TestModeDirAndFile(t *testing.T) {
	assert.Empty(t, modeDir("", schema.Infer))
	assert.Equal(t, "/tmp/bench.report/infer", modeDir("/tmp/bench.report", schema.Infer))
	assert.Empty(t, modeFile("", schema.Off))
	assert.Equal(t, "/tmp/cpu-off.pprof", modeFile("/tmp/cpu.pprof", schema.Off))
	assert.Equal(t, "/tmp/heap-infer", modeFile("/tmp/heap", schema.Infer))
}

func TestRunCost(t *testing.T) {
	c := runCost{events: 500_000, process: 10, clickhouse: 2.5, batchBytes: 90_000_000, batchRows: 500_000}
	assert.InDelta(t, 20.0, c.processPerM(), 1e-9)
	assert.InDelta(t, 5.0, c.clickhousePerM(), 1e-9)
	assert.InDelta(t, 180.0, c.batchBytesPerEvent(), 1e-9)
	assert.Zero(t, runCost{}.processPerM())
	assert.Zero(t, runCost{}.batchBytesPerEvent())
	assert.InDelta(t, 2_500.0, runCost{batchRows: 500_000, batches: 200}.rowsPerBatch(), 1e-9)
	assert.Zero(t, runCost{}.rowsPerBatch())
}

func TestTypedReport(t *testing.T) {
	f := benchFlags{events: 300_000, clients: 8, perRequest: 500, shards: 8, servers: 2, via: "http", properties: "p20"}
	gen := &generator{bodies: [][]byte{make([]byte, 3<<20)}}
	off := benchReport{mode: schema.Off, tp: throughputResult{accepted: 100_000, inserted: 80_000}, rate: 40_000,
		lat:      latencyResult{p50: 200 * time.Millisecond, p99: 400 * time.Millisecond, n: 190},
		cost:     runCost{events: 300_000, process: 6, clickhouse: 1.5, batchBytes: 30_000_000, batchRows: 300_000, batches: 60},
		peakHeap: 64 << 20, loadAvg: 0.5, chFS: "tmpfs",
		cpu:  map[string]float64{serviceOwnerPref + "sink": 1.5, serviceOwnerPref + "batcher": 1, ownerNATS: 0.9, ownerOther: 2},
		heap: heapPeaks{owners: map[string]uint64{serviceOwnerPref + "sink": 64 << 20, serviceOwnerPref + "batcher": 32 << 20, ownerNATS: 100 << 20}},
		store: storage{inserts: 60, insertP50: 40 * time.Millisecond, insertP99: 90 * time.Millisecond, insertRows: 300_000,
			parts: 7, filesPerPart: 30, rows: 310_000, bytes: 31_000_000, properties: 24_800_000}}
	infer := benchReport{mode: schema.Infer, tp: throughputResult{accepted: 90_000, inserted: 60_000}, rate: 30_000,
		lat:      latencyResult{p50: 250 * time.Millisecond, p99: 500 * time.Millisecond, n: 185},
		cost:     runCost{events: 300_000, process: 9, clickhouse: 3, batchBytes: 45_000_000, batchRows: 300_000, batches: 120},
		peakHeap: 96 << 20, columns: 20, loadAvg: 1.25,
		cpu:  map[string]float64{serviceOwnerPref + "sink": 3, serviceOwnerPref + "batcher": 3, ownerNATS: 0.9, ownerOther: 2},
		heap: heapPeaks{owners: map[string]uint64{serviceOwnerPref + "sink": 128 << 20, serviceOwnerPref + "batcher": 40 << 20, ownerNATS: 100 << 20}},
		store: storage{inserts: 120, insertP50: 60 * time.Millisecond, insertP99: 180 * time.Millisecond, insertRows: 300_000,
			parts: 8, filesPerPart: 110, rows: 310_000, bytes: 37_200_000, properties: 24_800_000, typed: 4_650_000}}
	// The four runs, there and back, each mode's two averaged.
	off1, off2, infer1, infer2 := off, off, infer, infer
	off1.tp.inserted, off2.tp.inserted = 70_000, 90_000
	off2.store.parts = 8 // 7.5 parts in the mean
	infer1.tp.inserted, infer2.tp.inserted = 65_000, 55_000
	all := []benchReport{off1, infer1, infer2, off2}
	out := typedReport(f, gen, []benchReport{meanRuns([]benchReport{off1, off2}), meanRuns([]benchReport{infer1, infer2})}, all)
	lines := strings.Split(out, "\n")
	require.GreaterOrEqual(t, len(lines), 20)
	assert.Equal(t, "Surge bench, typed columns off vs infer (properties p20; the same load in each: 300000 events, 8 clients x 500 events/request via http, 8 shards, 2 ClickHouse servers on tmpfs)", lines[1])
	assert.Equal(t, []string{
		"  run 1 off    inserted 70000 events/s, accepted 100000 events/s, p99 at half rate 400ms",
		"  run 2 infer  inserted 65000 events/s, accepted 90000 events/s, p99 at half rate 500ms",
		"  run 3 infer  inserted 55000 events/s, accepted 90000 events/s, p99 at half rate 500ms",
		"  run 4 off    inserted 90000 events/s, accepted 100000 events/s, p99 at half rate 400ms",
	}, lines[2:6])
	// The pairs' own ratios, and a note for the off runs, 1.29x apart.
	assert.Equal(t, []string{
		"  each pair there and back, inserted infer/off: runs 2/1 0.93x, runs 3/4 0.61x",
		"  note: the two off runs inserted 1.29x apart, more than 1.25x: the machine's pace moved, so the ratio is rough; run again",
	}, lines[6:8])
	lines = append(lines[:2], lines[8:]...)
	assert.Regexp(t, `^ +off +infer +infer/off$`, lines[2])
	for i, re := range []string{
		`^  accepted \(HTTP 202\) +100000 events/s +90000 events/s +0\.90x$`,
		`^  inserted \(queryable\) +80000 events/s +60000 events/s +0\.75x$`,
		`^  ingest-to-queryable rate +40000 events/s +30000 events/s$`,
		`^    p50 +200ms +250ms +1\.25x$`,
		`^    p99 +400ms +500ms +1\.25x$`,
		`^    probes +380 +370$`,
		`^  CPU per 1M events, bench +20\.0 s +30\.0 s +1\.50x$`,
		// The split by owner: the services and the NATS server, each
		// pooled over its mode's runs (3 and 6 s of the batcher's over
		// 600,000 events).
		`^    service batcher +3\.33 s +10\.00 s +3\.00x$`,
		`^    service sink +5\.00 s +10\.00 s +2\.00x$`,
		`^    NATS server \(embedded\) +3\.00 s +3\.00 s +1\.00x$`,
		`^  CPU per 1M events, ClickHouse +5\.0 s +10\.0 s +2\.00x$`,
		`^  peak Go heap, full load +64 MiB +96 MiB +1\.50x$`,
		// Each service's peak live heap, averaged over its mode's runs.
		`^    service batcher +32\.0 MiB +40\.0 MiB +1\.25x$`,
		`^    service sink +64\.0 MiB +128\.0 MiB +2\.00x$`,
		`^  BATCHES bytes per event +100 +150 +1\.50x$`,
		`^  rows per batch +5000 +2500 +0\.50x$`,
		`^  typed columns in events_local +0 +20$`,
		// ClickHouse's own figures: times and parts averaged, rows and
		// bytes pooled (over 620,000 rows each).
		`^  sink inserts, on the server: p50 +40\.0 ms +60\.0 ms +1\.50x$`,
		`^    p99 +90\.0 ms +180\.0 ms +2\.00x$`,
		`^    rows each +5000 +2500 +0\.50x$`,
		`^  parts after the run's merges +7\.5 +8\.0 +1\.07x$`,
		`^  files a part +30 +110 +3\.67x$`,
		`^  on disk, bytes an event +100\.0 +120\.0 +1\.20x$`,
		`^    properties column +80\.0 +80\.0 +1\.00x$`,
		`^    typed columns +0\.0 +15\.0$`,
		`^  load average before the run +0\.50 +1\.25$`,
	} {
		assert.Regexp(t, re, lines[3+i])
	}
	assert.Contains(t, out, "each mode's runs averaged (CPU and bytes pooled); latency phase at half each mode's own inserted rate")
	assert.Contains(t, out, "the load generator's 3 MiB of request bodies included")
	assert.Contains(t, out, "each service's peak live heap (its own peak, from the sampled allocation profile), averaged")
	assert.Contains(t, out, "the rows under it split it by owner from a CPU profile of the phase")
	assert.Contains(t, out, "limits are 50 new columns an hour and 200 in all")
	assert.Contains(t, out, "sink inserts: the time each took on its server (system.query_log), throughput phase")
	// Every row with a ratio is as wide as the header; no line ends in spaces.
	for _, i := range []int{3, 4, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21, 22, 23, 24, 25, 26} {
		assert.Len(t, lines[i], len(lines[2]), lines[i])
	}
	for _, l := range lines {
		assert.Equal(t, strings.TrimRight(l, " "), l)
	}

	// A zero figure of the first mode has no ratio; a fixed rate says so.
	f.rate = 20_000
	out = typedReport(f, gen, []benchReport{{mode: schema.Off}, infer}, nil)
	assert.Regexp(t, `(?m)^  accepted \(HTTP 202\) +0 events/s +90000 events/s +-$`, out)
	assert.Contains(t, out, "latency phase at 20000 events/s (--rate)")
	assert.NotContains(t, out, "each pair there and back", "no pairs without four runs")
}

// TestSpreadLines: runs within runSpread of each other get no note; a
// run that inserted nothing, or far less than its twin, gets one.
func TestSpreadLines(t *testing.T) {
	run := func(inserted float64) benchReport { return benchReport{tp: throughputResult{inserted: inserted}} }
	assert.Equal(t, []string{"each pair there and back, inserted on/off: runs 2/1 0.50x, runs 3/4 0.48x"},
		spreadLines([]benchReport{run(100), run(125)}, []benchReport{run(50), run(60)}, "off", "on"))
	assert.Equal(t, []string{
		"each pair there and back, inserted on/off: runs 2/1 -, runs 3/4 0.50x",
		"note: one of the two off runs inserted nothing, so the ratio means nothing; run again",
		"note: the two on runs inserted 2.00x apart, more than 1.25x: the machine's pace moved, so the ratio is rough; run again",
	}, spreadLines([]benchReport{run(0), run(100)}, []benchReport{run(100), run(50)}, "off", "on"))
}

func TestProfileKeys(t *testing.T) {
	body := `[
	{"user_id":"u1","type":"a","properties":{"i0":1,"i1":2,"f0":1.5,"s0":"pro","s1":"x","b0":true,"m":3,
		"context":{"page":{"url":"/a","title":"A"}}}},
	{"user_id":"u2","type":"a","properties":{"i0":7,"i1":8,"f0":2,"s0":"pro","s1":"y","b0":false,"m":"3",
		"context":{"page":{"url":"/b","title":"B"}}}},
	{"user_id":"u3","type":"a","properties":{"i1":10,"f0":2.5,"s0":"free","s1":"z","b0":true,"i9":3}}
	]`
	k, err := profileKeys([]byte(body))
	require.NoError(t, err)
	assert.Equal(t, sampleKeys{
		// Always integers, the commonest first; f0 and m are not.
		ints: []string{"i1", "i0", "i9"},
		// The key of fewer distinct values first, each with its commonest value.
		strs:   []stringKey{{"s0", "pro"}, {"s1", "x"}},
		nested: [][]string{{"context", "page", "url"}, {"context", "page", "title"}},
	}, k)

	// The design's countIf(p_plan = 'pro') first where the events have it.
	k, err = profileKeys([]byte(`[{"properties":{"a":"x","plan":"free"}},{"properties":{"a":"x","plan":"pro"}},{"properties":{"a":"x","plan":"free"}}]`))
	require.NoError(t, err)
	assert.Equal(t, []stringKey{{"plan", "pro"}, {"a", "x"}}, k.strs)

	k, err = profileKeys([]byte(`[{"properties":{"k_1":1.5,"context":{"page":{"title":"A","n":1}}}}]`))
	require.NoError(t, err)
	assert.Equal(t, sampleKeys{nested: [][]string{{"context", "page", "title"}}}, k)

	_, err = profileKeys([]byte(`{`))
	assert.Error(t, err)
}

func TestQueryPlans(t *testing.T) {
	keys := sampleKeys{ints: []string{"i0", "i1"}, strs: []stringKey{{"s0", "it's"}}, nested: [][]string{{"context", "page", "url"}}}
	cols := map[string]string{"p_i0": "Nullable(Int64)", "p_i1": "Nullable(Int64)", "p_s0": "Nullable(String)", "p_context_page_url": "Nullable(String)"}
	assert.Equal(t, []queryTiming{
		{name: "sum of an int key (i0)",
			typedSQL: "SELECT sum(p_i0) FROM surge.events",
			rawSQL:   "SELECT sum(visitParamExtractInt(properties, 'i0')) FROM surge.events"},
		{name: `count of a string value (s0 = 'it\'s')`,
			typedSQL: `SELECT countIf(p_s0 = 'it\'s') FROM surge.events`,
			rawSQL:   `SELECT countIf(visitParamExtractString(properties, 's0') = 'it\'s') FROM surge.events`},
		{name: "uniq of a nested key per day (context.page.url)",
			typedSQL: "SELECT toDate(ts) AS day, uniq(p_context_page_url) FROM surge.events GROUP BY day ORDER BY day",
			rawSQL:   "SELECT toDate(ts) AS day, uniq(visitParamExtractString(properties, 'url')) FROM surge.events GROUP BY day ORDER BY day"},
	}, queryPlans("surge", keys, cols))

	// The first key with a column of the query's type: i0's is a string
	// (a conflict in the batch that introduced it), i1's fits.
	cols["p_i0"] = "Nullable(String)"
	assert.Equal(t, "sum of an int key (i1)", queryPlans("surge", keys, cols)[0].name)
	// None fits, or the events have no such key: the query says why.
	delete(cols, "p_i1")
	delete(cols, "p_context_page_url")
	qs := queryPlans("surge", sampleKeys{ints: keys.ints, nested: keys.nested}, cols)
	assert.Equal(t, []queryTiming{
		{name: "sum of an int key", skipped: "no Nullable(Int64) column for any of 2 keys (p_i0 first)"},
		{name: "count of a string value", skipped: "no key is always a string"},
		{name: "uniq of a nested key per day", skipped: "no Nullable(String) column for any of 1 keys (p_context_page_url first)"},
	}, qs)
	assert.Equal(t, "no string under context.page", queryPlans("surge", sampleKeys{}, cols)[2].skipped)
}

func TestQueryReport(t *testing.T) {
	r := benchReport{mode: schema.Infer, flags: benchFlags{properties: "nested"}, queries: queryResults{rows: 612_000, floor: 4 * time.Millisecond, queries: []queryTiming{
		{name: "sum of an int key (n)", typedSQL: "SELECT sum(p_n) FROM surge.events", rawSQL: "SELECT sum(visitParamExtractInt(properties, 'n')) FROM surge.events",
			typed: 7900 * time.Microsecond, raw: 118500 * time.Microsecond, typedResult: "1234", rawResult: "1234"},
		{name: "count of a string value (plan = 'pro')", skipped: "p_plan is Nullable(Int64), not Nullable(String)"},
		{name: "uniq of a nested key per day (context.page.url)", typedSQL: "T", rawSQL: "R",
			typed: 20 * time.Millisecond, raw: 300 * time.Millisecond, typedResult: "2026-05-01 1000", rawResult: "2026-05-01 1001"},
		{name: "at the floor", typedSQL: "T", rawSQL: "R", typed: 4300 * time.Microsecond, raw: 30 * time.Millisecond},
	}}}
	out := queryReport(r)
	lines := strings.Split(out, "\n")
	assert.Equal(t, "Queries after the infer run (properties nested; 612000 rows, through the Distributed table; median of 5 runs each)", lines[1])
	assert.Regexp(t, `^ +typed column +visitParam +speed-up +above floor$`, lines[2])
	// (118.5 - 4) / (7.9 - 4) and (300 - 4) / (20 - 4)
	assert.Regexp(t, `^  sum of an int key \(n\) +7\.9 ms +118\.5 ms +15\.0x +29\.4x$`, lines[3])
	assert.Regexp(t, `^  count of a string value \(plan = 'pro'\) +skipped: p_plan is Nullable\(Int64\), not Nullable\(String\)$`, lines[4])
	assert.Regexp(t, `^  uniq of a nested key per day \(context\.page\.url\) +20\.0 ms +300\.0 ms +15\.0x +18\.5x$`, lines[5])
	assert.Regexp(t, `^  at the floor +4\.3 ms +30\.0 ms +7\.0x +at floor$`, lines[6])
	assert.Regexp(t, `^  floor: SELECT count\(\) through the same table took 4\.0 ms\.`, lines[7])
	assert.Len(t, lines[3], len(lines[2]))
	assert.Contains(t, out, "\n  sum of an int key (n)\n    SELECT sum(p_n) FROM surge.events\n      -> 1234\n    SELECT sum(visitParamExtractInt(properties, 'n')) FROM surge.events\n      -> 1234\n  uniq")
	// Only the query whose forms disagree says so.
	assert.Equal(t, 1, strings.Count(out, "the results differ"))
	assert.NotContains(t, out, "p_plan\n")
}

// TestQueriesOfTheProfiles checks the keys picked from the generated
// events: p20 gets the design's first two queries, nested the third.
func TestQueriesOfTheProfiles(t *testing.T) {
	for _, tc := range []struct {
		profile string
		run     []string // the queries that run
	}{
		{"p20", []string{"sum of an int key (duration_ms)", "count of a string value (plan = 'pro')"}},
		{"nested", []string{"uniq of a nested key per day (context.page.url)"}},
	} {
		t.Run(tc.profile, func(t *testing.T) {
			k, err := profileKeys(newGenerator(1000, 500, tc.profile, 32_000).bodies[0])
			require.NoError(t, err)
			// As if every key had its column.
			cols := map[string]string{}
			for _, key := range k.ints {
				cols[schema.ColumnName([]string{key})] = "Nullable(Int64)"
			}
			for _, s := range k.strs {
				cols[schema.ColumnName([]string{s.key})] = "Nullable(String)"
			}
			for _, path := range k.nested {
				cols[schema.ColumnName(path)] = "Nullable(String)"
			}
			var run []string
			for _, q := range queryPlans("surge", k, cols) {
				if q.skipped == "" {
					run = append(run, q.name)
				}
			}
			assert.Equal(t, tc.run, run)
		})
	}
}

// TestMeanRuns: rates, latencies, heap and load are averaged; CPU and
// bytes pooled over both runs' events, so a longer run weighs more.
func TestMeanRuns(t *testing.T) {
	a := benchReport{mode: schema.Infer, tp: throughputResult{accepted: 100, inserted: 80}, rate: 40,
		lat:      latencyResult{p50: 100 * time.Millisecond, p99: 300 * time.Millisecond, n: 10},
		cost:     runCost{events: 100_000, process: 1, clickhouse: 2, batchBytes: 1_000, batchRows: 100},
		peakHeap: 100 << 20, columns: 20, loadAvg: 1}
	b := benchReport{mode: schema.Infer, tp: throughputResult{accepted: 200, inserted: 40}, rate: 20,
		lat:      latencyResult{p50: 300 * time.Millisecond, p99: 500 * time.Millisecond, n: 12},
		cost:     runCost{events: 300_000, process: 7, clickhouse: 2, batchBytes: 3_000, batchRows: 100},
		peakHeap: 200 << 20, columns: 19, loadAvg: 2}
	m := meanRuns([]benchReport{a, b})
	assert.Equal(t, schema.Infer, m.mode)
	assert.InDelta(t, 150.0, m.tp.accepted, 1e-9)
	assert.InDelta(t, 60.0, m.tp.inserted, 1e-9)
	assert.Equal(t, 30, m.rate)
	assert.Equal(t, 200*time.Millisecond, m.lat.p50)
	assert.Equal(t, 400*time.Millisecond, m.lat.p99)
	assert.Equal(t, 22, m.lat.n)
	assert.InDelta(t, 20.0, m.cost.processPerM(), 1e-9) // 8 s over 400,000 events
	assert.InDelta(t, 10.0, m.cost.clickhousePerM(), 1e-9)
	assert.InDelta(t, 20.0, m.cost.batchBytesPerEvent(), 1e-9)
	assert.Equal(t, uint64(150<<20), m.peakHeap)
	assert.InDelta(t, 1.5, m.loadAvg, 1e-9)
	assert.Equal(t, 20, m.columns)
}

func TestFilesystem(t *testing.T) {
	assert.Equal(t, "tmpfs", filesystem("/dev/shm"))
	assert.Equal(t, "tmpfs", filesystem("/dev/shm/a/folder/not/made/yet"))
	assert.Equal(t, filesystem(t.TempDir()), filesystem(filepath.Join(t.TempDir(), "absent")))
}

// TestExt4Journaled reads a journal's thread as sysfs shows it, on a
// sysfs made for the test: the block device of the folder's device
// number, and its ext4 journal thread.
func TestExt4Journaled(t *testing.T) {
	dir := t.TempDir()
	var st syscall.Stat_t
	require.NoError(t, syscall.Stat(dir, &st))
	sys := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(sys, "devices", "virtual", "block", "vdz"), 0o755))
	require.NoError(t, os.MkdirAll(filepath.Join(sys, "dev", "block"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(sys, "devices", "virtual", "block", "vdz"),
		filepath.Join(sys, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev)))))
	_, known := ext4Journaled(sys, dir)
	assert.False(t, known, "no ext4 entry for the device")

	task := filepath.Join(sys, "fs", "ext4", "vdz", "journal_task")
	require.NoError(t, os.MkdirAll(filepath.Dir(task), 0o755))
	require.NoError(t, os.WriteFile(task, []byte("<none>\n"), 0o644))
	journaled, known := ext4Journaled(sys, dir)
	assert.True(t, known)
	assert.False(t, journaled)

	require.NoError(t, os.WriteFile(task, []byte("512\n"), 0o644))
	journaled, known = ext4Journaled(sys, dir)
	assert.True(t, known)
	assert.True(t, journaled)
}
