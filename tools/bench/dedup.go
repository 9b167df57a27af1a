package bench

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/services/batcher"
)

// With --dedup every event carries a client event_id, unique in the run,
// and the load runs on two fresh stacks: event-level deduplication off,
// then on (the batcher's default: 24 h window), so the on run checks and
// remembers every id as a real load with Segment messageIds would. No id
// repeats, so both stacks insert every event; the ratio is what checking
// and remembering costs. The two runs are printed side by side.

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
	var runs []benchReport
	for _, on := range []bool{false, true} {
		label := map[bool]string{false: "dedup-off", true: "dedup-on"}[on]
		cfg := batcher.DefaultDedupConfig()
		cfg.Enabled = on
		r, err := benchStack(ctx, f, gen, stackRun{
			dir: filepath.Join(f.dir, label), fresh: true, dedup: &cfg,
			report: modeDir(f.report, schema.Mode(label)), cpuProfile: modeFile(f.cpuProfile, schema.Mode(label)), memProfile: modeFile(f.memProfile, schema.Mode(label)),
		})
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		runs = append(runs, r)
	}
	fmt.Print(dedupReport(f, runs[0], runs[1]))
	return nil
}

func dedupReport(f benchFlags, off, on benchReport) string {
	var b strings.Builder
	cfg := batcher.DefaultDedupConfig()
	fmt.Fprintf(&b, "\nSurge bench, event-level dedup off vs on (window %s, up to %d ids a shard; the same load in each: %d events, each with its own event_id, %d clients x %d events/request)\n",
		cfg.Window, cfg.MaxIDsPerShard, f.events/f.perRequest*f.perRequest, f.clients, f.perRequest)
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
