package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/tools/stack"
)

// sinkLegResult is the sink alone: the rate at which it emptied a
// BATCHES stream that already held every batch, as the peers of the
// design's comparison were measured, beside the rate at which the hops
// before it (ingest, partitioner, batcher) filled BATCHES.
type sinkLegResult struct {
	events int
	// upstream is events/s from the first request to the last row in a
	// published batch, with the sink stopped.
	upstream float64
	// sink is rows/s from the restarted sink's readiness to its last
	// inserted row; startup is how long it took to be ready.
	sink     float64
	sinkIn   time.Duration
	startup  time.Duration
	inserted float64 // rows the restarted sink inserted
	inserts  float64 // the batches it inserted: one insert each
	// cost is the CPU of the bench process (the sink alone runs then)
	// and of ClickHouse while the sink emptied BATCHES.
	cost runCost
}

// sinkLeg stops the sink, sends the throughput phase's load again until
// the batcher has published every row into BATCHES, then starts a new
// sink and times it emptying BATCHES into ClickHouse. With profile, it
// writes a CPU profile of that emptying there.
func sinkLeg(ctx context.Context, st *stack.Stack, gen *generator, f benchFlags, profile string,
	send func(ctx context.Context, url string) error) (sinkLegResult, error) {
	if err := st.StopPart("sink"); err != nil {
		return sinkLegResult{}, fmt.Errorf("stop the sink: %w", err)
	}
	batcher := st.Part("batcher")
	batched := insertedCounter{every: 10 * time.Millisecond, count: func(context.Context) (float64, error) {
		return stack.Sum(batcher.Registry, "surge_batcher_rows_total"), nil
	}}
	up, err := throughputOf(ctx, []string{st.IngestURL}, batched, gen, f, send)
	if err != nil {
		return sinkLegResult{}, fmt.Errorf("fill BATCHES: %w", err)
	}
	events := f.events / f.perRequest * f.perRequest
	settled, err := settleMerges(ctx, st.ClickHouse.Addrs())
	if err != nil {
		return sinkLegResult{}, err
	}
	fmt.Printf("bench: sink leg: ClickHouse's merges ended %s after BATCHES was full\n", settled.Round(time.Millisecond))

	begin := time.Now()
	p, err := st.StartPart(ctx, "sink")
	if err != nil {
		return sinkLegResult{}, fmt.Errorf("start the sink: %w", err)
	}
	ready := time.Now()
	if profile != "" {
		stop, err := startCPUProfile(profile)
		if err != nil {
			return sinkLegResult{}, err
		}
		defer stop()
	}
	cost := startCost(st)
	for {
		// The new sink's registry counts from zero: only this phase's rows.
		if n := stack.Sum(p.Registry, "surge_sink_rows_inserted_total"); n >= float64(events) {
			in := time.Since(ready)
			// The CPU counts the merges these inserts started, as the
			// bulk reference's does.
			if _, err := settleMerges(ctx, st.ClickHouse.Addrs()); err != nil {
				return sinkLegResult{}, err
			}
			return sinkLegResult{events: events, upstream: up.inserted, sink: float64(events) / in.Seconds(),
				sinkIn: in, startup: ready.Sub(begin), inserted: n, cost: cost(events),
				inserts: stack.SumWhere(p.Registry, "surge_sink_batches_total", "outcome", "inserted")}, nil
		}
		if !retry.Sleep(ctx, 5*time.Millisecond) {
			return sinkLegResult{}, ctx.Err()
		}
	}
}
