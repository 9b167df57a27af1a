package schema

import (
	"encoding/json"
	"math/rand/v2"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
)

// profileBatch is a batch of n events of a profile, the same every run.
func profileBatch(name string, n int) *batch.Batch {
	rng := rand.New(rand.NewPCG(1, 2))
	props := make([]string, n)
	for i := range props {
		props[i] = Profile(name, rng, i)
	}
	return newBatch("t1", props...)
}

// settledSchema is the schema a profile's traffic reaches under p's
// limits once the hours have let every admissible column in.
func settledSchema(p *Projector, b *batch.Batch) *Doc {
	parsed := p.Parse(b)
	var doc *Doc
	for h := range 24 {
		next, changed := p.Plan(parsed, doc, now.Add(time.Duration(h)*time.Hour))
		if !changed {
			break
		}
		doc = next
	}
	return doc
}

// cpuTime is the CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestProfiles(t *testing.T) {
	for _, name := range Profiles {
		t.Run(name, func(t *testing.T) {
			b := profileBatch(name, 100)
			for _, props := range b.Properties {
				require.True(t, json.Valid([]byte(props)), props)
			}
			require.Equal(t, b.Properties, profileBatch(name, 100).Properties, "the same events every run")
		})
	}
	require.Equal(t, "{}", Profile("unknown", rand.New(rand.NewPCG(1, 2)), 0))
}

// TestProfileSchemas pins what each profile's traffic settles to under the
// default limits, which the benchmark measures.
func TestProfileSchemas(t *testing.T) {
	p := newProjector(t, nil)
	for name, want := range map[string]int{"p20": 20, "sparse200": 100, "nested": 11, "hostile": 100} {
		doc := settledSchema(p, profileBatch(name, 1000))
		require.Len(t, doc.Columns, want, name)
	}
}

// BenchmarkProject measures Parse, Plan and Project of a batch of 1,000
// events of each profile on the schema its traffic settles to, per event;
// and of a hostile batch of 5,000, the size of the bench's batches, where
// each of its 10,000 keys comes five times instead of once.
func BenchmarkProject(b *testing.B) {
	type run struct {
		name, profile string
		events        int
	}
	var runs []run
	for _, name := range Profiles {
		runs = append(runs, run{name, name, 1000})
	}
	runs = append(runs, run{"hostile-5000", "hostile", 5000})
	for _, r := range runs {
		name, events := r.profile, r.events
		b.Run(r.name, func(b *testing.B) {
			p := newProjector(b, nil)
			bt := profileBatch(name, events)
			doc := settledSchema(p, bt)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			cpuBefore := cpuTime()
			n := 0
			for b.Loop() {
				parsed := p.Parse(bt)
				p.Plan(parsed, doc, now)
				p.Project(parsed, doc, bt)
				p.Release(parsed)
				n++
			}
			cpu := cpuTime() - cpuBefore
			runtime.ReadMemStats(&after)
			perEvent := float64(n * events)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/perEvent, "ns/event")
			// CPU time, the garbage collector's included, holds on a busy
			// machine where the elapsed time does not.
			b.ReportMetric(float64(cpu.Nanoseconds())/perEvent, "cpu-ns/event")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/perEvent, "allocs/event")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/perEvent, "B/event")
		})
	}
}

// TestReleaseKeepsProjectionsIdentical: a projector whose Parsed memory
// is released and reused batch after batch projects every profile's batch
// to the same encoded block as a fresh projector, and a batch projected
// before a release keeps its columns.
func TestReleaseKeepsProjectionsIdentical(t *testing.T) {
	reused := newProjector(t, nil)
	var kept []*batch.Batch
	var want [][]byte
	for _, name := range Profiles {
		for _, size := range []int{1000, 10, 3000} {
			fresh := newProjector(t, nil)
			b1, b2 := profileBatch(name, size), profileBatch(name, size)
			doc := settledSchema(fresh, b1)

			fresh.Project(fresh.Parse(b1), doc, b1)
			parsed := reused.Parse(b2)
			reused.Project(parsed, doc, b2)
			reused.Release(parsed)
			require.Equal(t, batch.Encode(b1), batch.Encode(b2), "%s, %d events", name, b1.Len())
			kept = append(kept, b2)
			want = append(want, batch.Encode(b1))
		}
	}
	for i, b := range kept {
		require.Equal(t, want[i], batch.Encode(b), "batch %d after the later releases", i)
	}
}
