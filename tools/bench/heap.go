package bench

import (
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

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

// writeHeapProfile writes the heap profile to path.
func writeHeapProfile(path string) error {
	pf, err := os.Create(path)
	if err != nil {
		return err
	}
	defer pf.Close()
	return pprof.Lookup("heap").WriteTo(pf, 0)
}
