package bench

import (
	"bytes"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/google/pprof/profile"
)

// The single-process stack runs the four services, the embedded NATS
// server and the load generator in the bench process, so /proc gives
// their CPU only together. A CPU profile of the throughput phase splits
// it: each sample goes to the owner of its stack (stackOwner), the same
// rule as the heap's. Work the runtime does on its own goroutines (the
// garbage collector's background marking, the scheduler) has no owner's
// frame and is "other"; a service's allocations pay their share as mark
// assists on its own stacks. Go's profiler samples at 100 Hz, for about
// a percent of the CPU.

// cpuWatch profiles the bench process's CPU from now until the returned
// function is called, which gives each owner's CPU seconds and writes
// the profile to file too when file is not "".
func cpuWatch(file string) (stop func() (map[string]float64, error), err error) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() (map[string]float64, error) {
		pprof.StopCPUProfile()
		if file != "" {
			if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
				return nil, fmt.Errorf("cpu profile: %w", err)
			}
		}
		return cpuByOwner(buf.Bytes())
	}, nil
}

// cpuByOwner sums a CPU profile's samples by the owner of their stack,
// in seconds.
func cpuByOwner(data []byte) (map[string]float64, error) {
	p, err := profile.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("read cpu profile: %w", err)
	}
	value := -1
	for i, st := range p.SampleType {
		if st.Type == "cpu" && st.Unit == "nanoseconds" {
			value = i
		}
	}
	if value < 0 {
		return nil, fmt.Errorf("read cpu profile: no cpu/nanoseconds samples among %d types", len(p.SampleType))
	}
	out := map[string]float64{}
	var funcs []string
	for _, s := range p.Sample {
		funcs = funcs[:0]
		for _, loc := range s.Location { // leaf first
			for _, l := range loc.Line { // inlined callees first
				if l.Function != nil {
					funcs = append(funcs, l.Function.Name)
				}
			}
		}
		out[stackOwner(funcs)] += float64(s.Value[value]) / 1e9
	}
	return out, nil
}

// cpuReport lists each owner's CPU per 1M events of the throughput
// phase, services first, with its share of the profile; "" when there
// is no profile.
func cpuReport(cpu map[string]float64, events int) string {
	var total, svc float64
	for k, v := range cpu {
		total += v
		if strings.HasPrefix(k, serviceOwnerPref) {
			svc += v
		}
	}
	if total == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("  CPU per 1M events by owner (the throughput phase's CPU profile):\n")
	line := func(name string, v float64) {
		fmt.Fprintf(&b, "    %-42s%8.2f s   %3.0f%%\n", name, perMillion(v, events), 100*v/total)
	}
	for _, k := range ownerOrder(cpu) {
		line(k, cpu[k])
	}
	line("the four services together", svc)
	return b.String()
}
