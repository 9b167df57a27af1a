package bench

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"
)

// heapPeaks is what watchHeap measured: the process's peak HeapInuse
// and, per owner (stackOwner), the peak of the live heap the allocation
// profile attributes to it.
type heapPeaks struct {
	inuse  uint64
	owners map[string]uint64
}

// Owners of the in-process stack's heap, in the order the report lists them.
const (
	ownerNATS        = "NATS server (embedded)"
	ownerLoad        = "load generator"
	ownerNATSClient  = "NATS client (its own goroutines)"
	ownerClickHouse  = "ClickHouse client (its own goroutines)"
	ownerSurge       = "surge packages (stack beyond 32 frames)"
	ownerOther       = "other (runtime, net/http)"
	serviceOwnerPref = "service "
)

// stackOwner names who owns an allocation or a CPU sample, from its stack
// (leaf first):
// the embedded NATS server when any frame is its code, else the innermost
// Surge service (or the bench's load generator) that made it, else the
// client library whose own goroutine did.
func stackOwner(funcs []string) string {
	const surge = "github.com/surge-events/surge/"
	for _, fn := range funcs {
		if strings.HasPrefix(fn, "github.com/nats-io/nats-server/") {
			return ownerNATS
		}
	}
	for _, fn := range funcs {
		if rest, ok := strings.CutPrefix(fn, surge+"services/"); ok {
			name, _, _ := strings.Cut(rest, ".")
			name, _, _ = strings.Cut(name, "/")
			return serviceOwnerPref + name
		}
		if strings.HasPrefix(fn, surge+"tools/bench.") {
			return ownerLoad
		}
	}
	for _, fn := range funcs {
		switch {
		case strings.HasPrefix(fn, surge):
			return ownerSurge
		case strings.HasPrefix(fn, "github.com/nats-io/nats.go"):
			return ownerNATSClient
		case strings.HasPrefix(fn, "github.com/ClickHouse/"):
			return ownerClickHouse
		}
	}
	return ownerOther
}

// heapByOwner is the live heap at the last garbage collection, from the
// runtime's sampled allocation profile scaled as pprof scales it, summed
// by stackOwner. names caches each PC's function.
func heapByOwner(names map[uintptr][]string, records []runtime.MemProfileRecord) (map[string]uint64, []runtime.MemProfileRecord) {
	n, _ := runtime.MemProfile(records, false)
	for n > len(records) {
		records = make([]runtime.MemProfileRecord, n+n/4)
		n, _ = runtime.MemProfile(records, false)
	}
	out := map[string]uint64{}
	var funcs []string
	for _, r := range records[:n] {
		funcs = funcs[:0]
		for _, pc := range r.Stack() {
			fns, ok := names[pc]
			if !ok {
				// One PC is several functions where calls were inlined.
				frames := runtime.CallersFrames([]uintptr{pc})
				for {
					f, more := frames.Next()
					fns = append(fns, f.Function)
					if !more {
						break
					}
				}
				names[pc] = fns
			}
			funcs = append(funcs, fns...)
		}
		out[stackOwner(funcs)] += scaledInuse(r, int64(runtime.MemProfileRate))
	}
	return out, records
}

// scaledInuse undoes the profile's sampling, as runtime/pprof does: an
// allocation of s bytes is sampled with probability 1-exp(-s/rate).
func scaledInuse(r runtime.MemProfileRecord, rate int64) uint64 {
	count, size := r.InUseObjects(), r.InUseBytes()
	if count <= 0 || size <= 0 {
		return 0
	}
	if rate <= 1 {
		return uint64(size)
	}
	avg := float64(size) / float64(count)
	return uint64(float64(size) / (1 - math.Exp(-avg/float64(rate))))
}

// watchHeap samples the Go heap in use every 100 ms, and its owners every
// second, until the returned function is called, which returns the
// peaks: what bounded queues and in-flight limits keep flat however hard
// the load pushes, apart from the embedded NATS server's own. peakFile,
// when not nil, names the file a service's heap profile is written to
// when its live heap peaks (see newPeak), for what it held then.
//
// It starts with two garbage collections, so neither figure counts what
// an earlier phase or stack left: the allocation profile is published a
// cycle after the one that freed an object, and HeapInuse keeps freed
// spans until a collection sweeps them. Without them, each stack of a
// sitting looked heavier than the one before it (the process's peak 783,
// 1,405, 1,516, then 1,756 MiB over four stacks of one sitting, and the
// load generator's 26 MiB, then 314-785 MiB: the reference inserts of
// the stack before).
func watchHeap(peakFile func(service string) string) (stop func() heapPeaks) {
	runtime.GC()
	runtime.GC()
	done := make(chan struct{})
	peak := make(chan heapPeaks, 1)
	go func() {
		top := heapPeaks{owners: map[string]uint64{}}
		written := map[string]uint64{} // the live heap of each service's last profile
		names := map[uintptr][]string{}
		var records []runtime.MemProfileRecord
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			top.inuse = max(top.inuse, ms.HeapInuse)
			owners := func() {
				var by map[string]uint64
				by, records = heapByOwner(names, records)
				for k, v := range by {
					if service, ok := strings.CutPrefix(k, serviceOwnerPref); ok && peakFile != nil && newPeak(v, top.owners[k], written[k]) {
						if err := writeHeapProfile(peakFile(service)); err != nil {
							fmt.Printf("bench: heap profile at the %s's peak: %v\n", service, err)
						} else {
							written[k] = v
						}
					}
					top.owners[k] = max(top.owners[k], v)
				}
			}
			if i%10 == 0 {
				owners()
			}
			select {
			case <-done:
				// A last look: a phase shorter than a second is seen
				// after its allocations too, not only at its start.
				owners()
				peak <- top
				return
			case <-tick.C:
			}
		}
	}()
	return func() heapPeaks {
		close(done)
		return <-peak
	}
}

// newPeak reports whether a service's live heap v is a peak worth a
// profile: above its peak so far, and an eighth above the last profile's,
// so a heap creeping up is written a few times, not every second.
func newPeak(v, peak, written uint64) bool {
	return v > peak && v > written+written/8
}

// ownersReport lists each owner's peak live heap, services first.
func (h heapPeaks) ownersReport() string {
	var b strings.Builder
	var svc uint64
	b.WriteString("  peak live heap by owner (sampled allocation profile, each owner's own peak, every 1 s):\n")
	for _, k := range ownerOrder(h.owners) {
		if strings.HasPrefix(k, serviceOwnerPref) {
			svc += h.owners[k]
		}
		fmt.Fprintf(&b, "    %-42s%8.1f MiB\n", k, mib(h.owners[k]))
	}
	fmt.Fprintf(&b, "    %-42s%8.1f MiB\n", "the four services together", mib(svc))
	return b.String()
}

// ownerOrder is the owners of by in the order the report lists them:
// the services by name, then the others.
func ownerOrder[V any](by map[string]V) []string {
	var services, rest []string
	for k := range by {
		if strings.HasPrefix(k, serviceOwnerPref) {
			services = append(services, k)
		} else {
			rest = append(rest, k)
		}
	}
	slices.Sort(services)
	order := []string{ownerNATS, ownerLoad, ownerNATSClient, ownerClickHouse, ownerSurge, ownerOther}
	slices.SortFunc(rest, func(a, b string) int { return slices.Index(order, a) - slices.Index(order, b) })
	return append(services, rest...)
}

// writeHeapProfile writes the heap profile to path.
func writeHeapProfile(path string) error {
	pf, err := os.Create(path)
	if err != nil {
		return err
	}
	defer pf.Close()
	return pprof.Lookup("heap").WriteTo(pf, 0)
}

// mib is bytes in MiB.
func mib(v uint64) float64 { return float64(v) / (1 << 20) }

// startCPUProfile profiles the process's CPU into file until the returned
// function is called.
func startCPUProfile(file string) (func(), error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}
