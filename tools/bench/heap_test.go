package bench

import (
	"bytes"
	"runtime"
	"slices"
	"testing"

	"github.com/google/pprof/profile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNewPeak checks when a service's live heap is worth a profile: a new
// peak, an eighth above the last profile's.
func TestNewPeak(t *testing.T) {
	for _, tc := range []struct {
		v, peak, written uint64
		want             bool
	}{
		{v: 10 << 20, want: true},                                          // the first sample
		{v: 100, peak: 100, written: 100, want: false},                     // no higher
		{v: 110, peak: 100, written: 100, want: false},                     // higher, under an eighth
		{v: 113, peak: 100, written: 100, want: true},                      // an eighth above
		{v: 113, peak: 120, written: 100, want: false},                     // above the profile, not the peak
		{v: 140, peak: 120, written: 120, want: true},                      // both
		{v: 1 << 30, peak: 1<<30 - 1, written: 1<<30 - 1<<20, want: false}, // a creep
	} {
		assert.Equal(t, tc.want, newPeak(tc.v, tc.peak, tc.written), "%+v", tc)
	}
	assert.Equal(t, "/tmp/mem-infer-peak-sink.pprof", suffixed(modeFile("/tmp/mem.pprof", "infer"), "peak-sink"))
}

// TestHeapOwner checks who owns an allocation by its stack, leaf first.
func TestHeapOwner(t *testing.T) {
	const surge = "github.com/surge-events/surge/"
	assert.Equal(t, ownerNATS, stackOwner([]string{"runtime.mallocgc", surge + "services/sink.(*shardLoop).Run", "github.com/nats-io/nats-server/v2/server.(*stream).processInboundJetStreamMsg"}))
	assert.Equal(t, serviceOwnerPref+"sink", stackOwner([]string{"github.com/ClickHouse/ch-go/proto.(*ColStr).Append", surge + "services/sink.(*server).insert"}))
	assert.Equal(t, serviceOwnerPref+"batcher", stackOwner([]string{surge + "pkg/schema.(*Projector).Parse", surge + "services/batcher/cmd/batcher.main"}))
	assert.Equal(t, ownerLoad, stackOwner([]string{surge + "tools/bench.(*generator).body"}))
	assert.Equal(t, ownerClickHouse, stackOwner([]string{"github.com/ClickHouse/clickhouse-go/v2.(*connect).process"}))
	assert.Equal(t, ownerSurge, stackOwner([]string{surge + "pkg/batch.Decode"}))
	assert.Equal(t, ownerOther, stackOwner([]string{"net/http.(*conn).serve"}))
}

// leftover keeps an allocation of the load generator's alive until
// TestWatchHeapForgetsWhatWasFreed drops it.
var leftover []byte

// leftoverAlloc allocates in a function of this package, so stackOwner
// gives it to the load generator.
//
//go:noinline
func leftoverAlloc(n int) []byte { return make([]byte, n) }

// TestWatchHeapForgetsWhatWasFreed checks that a watch does not count
// what was freed before it started, as an earlier stack's heap is: an
// allocation the profile and HeapInuse still show, then dropped.
func TestWatchHeapForgetsWhatWasFreed(t *testing.T) {
	const size = 64 << 20
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	leftover = leftoverAlloc(size)
	runtime.GC() // the profile now shows it live
	leftover = nil
	peaks := watchHeap(nil)()
	assert.Less(t, peaks.owners[ownerLoad], uint64(size/2), "the load generator's peak counts a freed allocation")
	assert.Less(t, peaks.inuse, before+size/2, "HeapInuse counts a freed allocation")
}

// TestCPUByOwner checks that a CPU profile's samples go to the owner of
// their stack, in seconds, inlined frames included.
func TestCPUByOwner(t *testing.T) {
	const surge = "github.com/surge-events/surge/"
	fns := map[string]*profile.Function{}
	loc := func(names ...string) *profile.Location { // one location, inlined callees first
		l := &profile.Location{ID: uint64(len(fns) + 1)}
		for _, n := range names {
			if fns[n] == nil {
				fns[n] = &profile.Function{ID: uint64(len(fns) + 1), Name: n}
			}
			l.Line = append(l.Line, profile.Line{Function: fns[n]})
		}
		return l
	}
	sink := loc("github.com/ClickHouse/ch-go/proto.(*ColStr).Append", surge+"services/sink.(*server).insert")
	batcher := loc(surge+"pkg/schema.(*Projector).Parse", surge+"services/batcher.(*shardLoop).cut")
	mark := loc("runtime.gcBgMarkWorker")
	p := &profile.Profile{
		SampleType: []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}},
		PeriodType: &profile.ValueType{Type: "cpu", Unit: "nanoseconds"},
		Period:     10_000_000,
		Sample: []*profile.Sample{
			{Location: []*profile.Location{sink}, Value: []int64{3, 30_000_000}},
			{Location: []*profile.Location{loc("runtime.memmove"), sink}, Value: []int64{1, 10_000_000}},
			{Location: []*profile.Location{batcher}, Value: []int64{25, 250_000_000}},
			{Location: []*profile.Location{mark}, Value: []int64{7, 70_000_000}},
		},
	}
	for _, f := range fns {
		p.Function = append(p.Function, f)
	}
	for _, s := range p.Sample {
		for _, l := range s.Location {
			if !slices.Contains(p.Location, l) {
				p.Location = append(p.Location, l)
			}
		}
	}
	require.NoError(t, p.CheckValid())
	var buf bytes.Buffer
	require.NoError(t, p.Write(&buf))
	got, err := cpuByOwner(buf.Bytes())
	require.NoError(t, err)
	assert.Equal(t, map[string]float64{serviceOwnerPref + "sink": 0.04, serviceOwnerPref + "batcher": 0.25, ownerOther: 0.07}, got)

	report := cpuReport(got, 200_000)
	assert.Equal(t, `  CPU per 1M events by owner (the throughput phase's CPU profile):
    service batcher                               1.25 s    69%
    service sink                                  0.20 s    11%
    other (runtime, net/http)                     0.35 s    19%
    the four services together                    1.45 s    81%
`, report)
	assert.Empty(t, cpuReport(nil, 200_000))
}
