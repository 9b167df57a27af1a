package bench

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/services/batcher"
)

// With --dedup every event carries a client event_id, unique in the run,
// and the load runs on two fresh stacks: event-level deduplication off,
// then on (the batcher's default: 24 h window), so the on run checks and
// remembers every id as a real load with Segment messageIds would. No id
// repeats, so both stacks insert every event; the ratio is what checking
// and remembering costs. The stacks run in the order off, on, on, off: on
// this machine a stack runs slower after another (the first one's files
// are still being written back), which alone moved a single off-then-on
// ratio from 0.5 to 1.3; the ABBA order cancels it. Each mode's two runs
// are averaged and printed side by side.

// idPlaceholder stands in a body for the request number (16 hex digits),
// stamped into a copy of the body for every request.
const idPlaceholder = "################"

// stampIDs gives every event of the bodies an event_id,
// "<request number>-<index>", the request number stamped at send time
// (body), so no two requests share an id.
func (g *generator) stampIDs() {
	g.idAt = make([][]int, len(g.bodies))
	for n, body := range g.bodies {
		var b bytes.Buffer
		i := 0
		for {
			at := bytes.Index(body, []byte(`{"user_id":`))
			if at < 0 {
				b.Write(body)
				break
			}
			b.Write(body[:at])
			b.WriteString(`{"event_id":"`)
			g.idAt[n] = append(g.idAt[n], b.Len())
			fmt.Fprintf(&b, `%s-%d",`, idPlaceholder, i)
			i++
			body = body[at+1:]
		}
		g.bodies[n] = b.Bytes()
	}
}

// stamp is body n with the request number req in each of its ids.
func (g *generator) stamp(n int, req uint64) []byte {
	out := bytes.Clone(g.bodies[n])
	num := fmt.Sprintf("%016x", req)
	for _, at := range g.idAt[n] {
		copy(out[at:], num)
	}
	return out
}

// benchDedup runs the dedup-off and dedup-on stacks and prints them side
// by side.
func benchDedup(ctx context.Context, f benchFlags, gen *generator) error {
	gen.stampIDs()
	runs := map[bool][]benchReport{}
	for i, on := range []bool{false, true, true, false} {
		label := fmt.Sprintf("%s-%d", map[bool]string{false: "dedup-off", true: "dedup-on"}[on], i+1)
		cfg := batcher.DefaultDedupConfig()
		cfg.Enabled = on
		r, err := benchStack(ctx, f, gen, stackRun{
			dir: filepath.Join(f.dir, label), fresh: true, dedup: &cfg, suppressed: map[bool]int{true: f.suppressed}[on],
			report: modeDir(f.report, schema.Mode(label)), cpuProfile: modeFile(f.cpuProfile, schema.Mode(label)), memProfile: modeFile(f.memProfile, schema.Mode(label)),
		})
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		runs[on] = append(runs[on], r)
	}
	fmt.Print(dedupReport(f, runs[false], runs[true]))
	return nil
}

// mean is the average of the runs' throughput and p99.
func mean(runs []benchReport) benchReport {
	var m benchReport
	for _, r := range runs {
		m.tp.accepted += r.tp.accepted / float64(len(runs))
		m.tp.inserted += r.tp.inserted / float64(len(runs))
		m.lat.p99 += r.lat.p99 / time.Duration(len(runs))
	}
	return m
}

func dedupReport(f benchFlags, offs, ons []benchReport) string {
	off, on := mean(offs), mean(ons)
	var b strings.Builder
	cfg := batcher.DefaultDedupConfig()
	if f.suppressed > 0 {
		fmt.Fprintf(&b, "\n(on: with %d users on the suppression list too, none of the load's)", f.suppressed)
	}
	fmt.Fprintf(&b, "\nSurge bench, event-level dedup off vs on (window %s, up to %d ids a shard; the same load in each: %d events, each with its own event_id, %d clients x %d events/request; stacks run off, on, on, off, each mode's two averaged)\n",
		cfg.Window, cfg.MaxIDsPerShard, f.events/f.perRequest*f.perRequest, f.clients, f.perRequest)
	for i, r := range []benchReport{offs[0], ons[0], ons[1], offs[1]} {
		fmt.Fprintf(&b, "  run %d %-9s inserted %.0f events/s, accepted %.0f events/s\n", i+1, map[bool]string{false: "dedup off", true: "dedup on"}[i == 1 || i == 2], r.tp.inserted, r.tp.accepted)
	}
	row := func(label, a, c, ratio string) { fmt.Fprintf(&b, "  %-26s %20s %20s %10s\n", label, a, c, ratio) }
	ratio := func(a, c float64) string {
		if a == 0 {
			return "-"
		}
		return fmt.Sprintf("%.3f", c/a)
	}
	row("", "dedup off", "dedup on", "on/off")
	row("accepted (HTTP 202)", fmt.Sprintf("%.0f events/s", off.tp.accepted), fmt.Sprintf("%.0f events/s", on.tp.accepted), ratio(off.tp.accepted, on.tp.accepted))
	row("inserted (queryable)", fmt.Sprintf("%.0f events/s", off.tp.inserted), fmt.Sprintf("%.0f events/s", on.tp.inserted), ratio(off.tp.inserted, on.tp.inserted))
	row("p99 ingest-to-queryable", off.lat.p99.String(), on.lat.p99.String(), ratio(off.lat.p99.Seconds(), on.lat.p99.Seconds()))
	return b.String()
}
