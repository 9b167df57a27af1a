package bench

import (
	"bytes"
	"context"
	"fmt"

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

// benchDedup runs the dedup-off and dedup-on stacks (offOn) and prints
// them side by side.
func benchDedup(ctx context.Context, f benchFlags, gen *generator) error {
	gen.stampIDs()
	offs, ons, err := runOffOn(ctx, f, gen, offOn{name: "dedup", run: func(on bool) stackRun {
		cfg := batcher.DefaultDedupConfig()
		cfg.Enabled = on
		return stackRun{dedup: &cfg, suppressed: map[bool]int{true: f.suppressed}[on]}
	}})
	if err != nil {
		return err
	}
	cfg := batcher.DefaultDedupConfig()
	title := fmt.Sprintf("Surge bench, event-level dedup off vs on (window %s, up to %d ids a shard; the same load in each: %d events, each with its own event_id, %d clients x %d events/request",
		cfg.Window, cfg.MaxIDsPerShard, f.events/f.perRequest*f.perRequest, f.clients, f.perRequest)
	if f.suppressed > 0 {
		title += fmt.Sprintf("; on, %d users (none of the load's) on the suppression list too", f.suppressed)
	}
	fmt.Print(offOnReport(title, "dedup", offs, ons))
	return nil
}
