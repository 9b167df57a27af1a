package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseGauge(t *testing.T) {
	text := `# HELP go_memstats_heap_inuse_bytes Number of heap bytes that are in use.
# TYPE go_memstats_heap_inuse_bytes gauge
go_memstats_heap_inuse_bytes_total_fake 1
go_memstats_heap_inuse_bytes 1.2582912e+07
go_memstats_heap_objects 40000
`
	v, err := parseGauge(strings.NewReader(text), heapMetric)
	require.NoError(t, err)
	assert.Equal(t, 12582912.0, v)

	_, err = parseGauge(strings.NewReader("go_goroutines 12\n"), heapMetric)
	assert.ErrorContains(t, err, "no sample go_memstats_heap_inuse_bytes")

	_, err = parseGauge(strings.NewReader("go_memstats_heap_inuse_bytes x\n"), heapMetric)
	assert.Error(t, err)
}

func TestSumPeaks(t *testing.T) {
	assert.Equal(t, uint64(0), sumPeaks(nil))
	assert.Equal(t, uint64(60), sumPeaks(map[string]uint64{"ingest-0": 10, "ingest-1": 20, "sink-0": 30}))
}

func TestCompareReport(t *testing.T) {
	f := benchFlags{events: 500_000, clients: 8, perRequest: 500, shards: 8}
	single := benchFigures{accepted: 100_000, inserted: 80_000, rate: 40_000, heap: 64 << 20, processes: 1,
		lat: latencyResult{p50: 200 * time.Millisecond, p99: 400 * time.Millisecond, n: 190}}
	cluster := benchFigures{accepted: 50_000, inserted: 40_000, rate: 20_000, heap: 256 << 20, processes: 8,
		lat: latencyResult{p50: 300 * time.Millisecond, p99: time.Second, n: 180}}
	out := compareReport(f, single, cluster)
	lines := strings.Split(out, "\n")
	require.GreaterOrEqual(t, len(lines), 12)
	assert.Equal(t, "Surge bench, single process vs cluster (same load: 500000 events, 8 clients x 500 events/request over HTTP, 8 shards)", lines[1])
	assert.Regexp(t, `^  accepted \(HTTP 202\) +100000 events/s +50000 events/s +0\.50x$`, lines[3])
	assert.Regexp(t, `^  inserted \(queryable\) +80000 events/s +40000 events/s +0\.50x$`, lines[4])
	assert.Regexp(t, `^  ingest-to-queryable rate +40000 events/s +20000 events/s$`, lines[5])
	assert.Regexp(t, `^    p50 +200ms +300ms +1\.50x$`, lines[6])
	assert.Regexp(t, `^    p99 +400ms +1s +2\.50x$`, lines[7])
	assert.Regexp(t, `^    probes +190 +180$`, lines[8])
	assert.Regexp(t, `^  peak Go heap, full load +64 MiB +256 MiB +4\.00x$`, lines[9])
	assert.Contains(t, out, "sum over 8 service processes of each one's peak go_memstats_heap_inuse_bytes")
	// Every row with a ratio is as wide as the header; no line ends in spaces.
	for _, i := range []int{3, 4, 6, 7, 9} {
		assert.Len(t, lines[i], len(lines[2]), lines[i])
	}
	for _, l := range lines {
		assert.Equal(t, strings.TrimRight(l, " "), l)
	}

	// A zero single-process figure has no ratio.
	assert.Contains(t, compareReport(f, benchFigures{}, cluster), " -\n")
}
