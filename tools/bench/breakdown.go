package bench

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/tools/stack"
)

// breakdown is where the latency phase's time went, read from the
// services' own metrics over the phase: how the batcher cut batches and
// how long they lingered, how large they were, how long the sink's
// inserts took, and the sink's own view of ingest to insert. The probes'
// p99 is roughly the linger of a batch, one insert and the hops; this
// says which of them moved.
type breakdown struct {
	cuts               map[batch.CutReason]float64
	rows               hist // rows per published batch
	insert             hist // seconds per insert
	publish            hist // seconds from a batch's publish to its PubAck
	endToEnd           hist // seconds from received_at to the row's insert
	lingerMean, linger float64
	lingerAbove        float64 // share of samples with some shard's linger above min_age
}

// The metrics breakdown reads.
const (
	metricCuts     = "surge_batcher_cut_total"
	metricRows     = "surge_batcher_batch_rows"
	metricPublish  = "surge_batcher_publish_duration_seconds"
	metricLinger   = "surge_batcher_linger_seconds"
	metricInsert   = "surge_sink_insert_duration_seconds"
	metricEndToEnd = "surge_sink_end_to_end_seconds"
)

// watchBreakdown snapshots the batcher's and the sink's metrics now and
// samples the shards' linger every 100 ms until the returned function is
// called, which gives the breakdown since. A part missing (restarted
// meanwhile) gives what the others had.
func watchBreakdown(st *stack.Stack, minAge time.Duration) func() breakdown {
	reg := func(name string) prometheus.Gatherer {
		if p := st.Part(name); p != nil {
			return p.Registry
		}
		return prometheus.NewRegistry()
	}
	start := snapshot(reg("batcher"), reg("sink"))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var sum, peak, above float64
	var samples int
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				vals := gaugeValues(reg("batcher"), metricLinger)
				if len(vals) == 0 {
					continue
				}
				var s, m float64
				for _, v := range vals {
					s += v
					m = max(m, v)
				}
				sum += s / float64(len(vals))
				peak = max(peak, m)
				if m > minAge.Seconds() {
					above++
				}
				samples++
			}
		}
	})
	return func() breakdown {
		cancel()
		wg.Wait()
		end := snapshot(reg("batcher"), reg("sink"))
		b := end.minus(start)
		if samples > 0 {
			b.lingerMean, b.linger, b.lingerAbove = sum/float64(samples), peak, above/float64(samples)
		}
		return b
	}
}

// snapshot reads the counters and histograms of a breakdown.
func snapshot(batcher, sink prometheus.Gatherer) breakdown {
	b := breakdown{cuts: map[batch.CutReason]float64{}}
	for _, r := range batch.CutReasons {
		b.cuts[r] = stack.SumWhere(batcher, metricCuts, "reason", string(r))
	}
	b.rows = histOf(batcher, metricRows)
	b.publish = histOf(batcher, metricPublish)
	b.insert = histOf(sink, metricInsert)
	b.endToEnd = histOf(sink, metricEndToEnd)
	return b
}

// minus is what b counted since a.
func (b breakdown) minus(a breakdown) breakdown {
	d := breakdown{cuts: map[batch.CutReason]float64{}}
	for r, n := range b.cuts {
		d.cuts[r] = n - a.cuts[r]
	}
	d.rows, d.publish = b.rows.minus(a.rows), b.publish.minus(a.publish)
	d.insert, d.endToEnd = b.insert.minus(a.insert), b.endToEnd.minus(a.endToEnd)
	return d
}

// summary is the breakdown's lines in the bench's report.
func (b breakdown) summary() string {
	var cuts []string
	for _, r := range batch.CutReasons {
		if n := b.cuts[r]; n > 0 {
			cuts = append(cuts, fmt.Sprintf("%s %.0f", r, n))
		}
	}
	ms := func(s float64) string {
		if math.IsNaN(s) {
			return "n/a"
		}
		return fmt.Sprintf("%.0f ms", 1000*s)
	}
	return fmt.Sprintf(`  where the latency phase's time went (the services' metrics over the phase):
    batches cut                 %s; rows per batch p50 %.0f, p99 %.0f
    linger                      mean %s, peak %s; some shard above min age in %.0f%% of 100 ms samples
    publish to PubAck           p50 %s  p99 %s
    insert                      p50 %s  p99 %s  (%d inserts)
    received to inserted        p50 %s  p99 %s  (the sink's view, per row)
`, strings.Join(cuts, ", "), b.rows.quantile(0.5), b.rows.quantile(0.99),
		ms(b.lingerMean), ms(b.linger), 100*b.lingerAbove,
		ms(b.publish.quantile(0.5)), ms(b.publish.quantile(0.99)),
		ms(b.insert.quantile(0.5)), ms(b.insert.quantile(0.99)), b.insert.count,
		ms(b.endToEnd.quantile(0.5)), ms(b.endToEnd.quantile(0.99)))
}

// hist is a histogram summed over its series: cumulative counts per
// upper bound, as Prometheus keeps them.
type hist struct {
	upper []float64
	cum   []uint64
	count uint64
}

// histOf sums the series of the named histogram in reg; empty when absent.
func histOf(reg prometheus.Gatherer, name string) hist {
	series, _ := stack.Series(reg, name)
	var h hist
	for _, m := range series {
		ph := m.GetHistogram()
		if ph == nil {
			continue
		}
		if h.upper == nil {
			for _, bk := range ph.GetBucket() {
				h.upper = append(h.upper, bk.GetUpperBound())
			}
			h.cum = make([]uint64, len(h.upper))
		}
		for i, bk := range ph.GetBucket() {
			if i < len(h.cum) {
				h.cum[i] += bk.GetCumulativeCount()
			}
		}
		h.count += ph.GetSampleCount()
	}
	return h
}

// minus is what h counted since a (a histogram of the same buckets, or
// an empty one).
func (h hist) minus(a hist) hist {
	d := hist{upper: h.upper, cum: make([]uint64, len(h.cum)), count: h.count - a.count}
	for i := range h.cum {
		d.cum[i] = h.cum[i]
		if i < len(a.cum) {
			d.cum[i] -= a.cum[i]
		}
	}
	return d
}

// quantile interpolates the q-quantile within its bucket, as PromQL's
// histogram_quantile does; the highest bound when it lies beyond the
// last one, NaN when h is empty.
func (h hist) quantile(q float64) float64 {
	if h.count == 0 || len(h.upper) == 0 {
		return math.NaN()
	}
	rank := q * float64(h.count)
	lower, below := 0.0, uint64(0)
	for i, up := range h.upper {
		if float64(h.cum[i]) >= rank {
			in := h.cum[i] - below
			if in == 0 {
				return up
			}
			return lower + (up-lower)*(rank-float64(below))/float64(in)
		}
		lower, below = up, h.cum[i]
	}
	return h.upper[len(h.upper)-1]
}

// gaugeValues is every series of the named gauge in reg.
func gaugeValues(reg prometheus.Gatherer, name string) []float64 {
	series, _ := stack.Series(reg, name)
	var vals []float64
	for _, m := range series {
		if g := m.GetGauge(); g != nil {
			vals = append(vals, g.GetValue())
		}
	}
	return vals
}
