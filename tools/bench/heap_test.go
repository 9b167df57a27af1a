package bench

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
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
	assert.Equal(t, ownerNATS, heapOwner([]string{"runtime.mallocgc", surge + "services/sink.(*shardLoop).Run", "github.com/nats-io/nats-server/v2/server.(*stream).processInboundJetStreamMsg"}))
	assert.Equal(t, serviceOwnerPref+"sink", heapOwner([]string{"github.com/ClickHouse/ch-go/proto.(*ColStr).Append", surge + "services/sink.(*server).insert"}))
	assert.Equal(t, serviceOwnerPref+"batcher", heapOwner([]string{surge + "pkg/schema.(*Projector).Parse", surge + "services/batcher/cmd/batcher.main"}))
	assert.Equal(t, ownerLoad, heapOwner([]string{surge + "tools/bench.(*generator).body"}))
	assert.Equal(t, ownerClickHouse, heapOwner([]string{"github.com/ClickHouse/clickhouse-go/v2.(*connect).process"}))
	assert.Equal(t, ownerSurge, heapOwner([]string{surge + "pkg/batch.Decode"}))
	assert.Equal(t, ownerOther, heapOwner([]string{"net/http.(*conn).serve"}))
}

// leftover keeps an allocation of the load generator's alive until
// TestWatchHeapForgetsWhatWasFreed drops it.
var leftover []byte

// leftoverAlloc allocates in a function of this package, so heapOwner
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
