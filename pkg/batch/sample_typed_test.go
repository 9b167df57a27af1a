package batch_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/batch"
)

// wideProperty is one property of wideBatch's events and its typed column:
// value draws the row's value, nil when the event lacks the property.
type wideProperty struct {
	name  string
	kind  batch.Kind
	value func(r *rand.Rand, ts time.Time) any
}

// sometimes returns value in share of the rows, nil in the others.
func sometimes(share float64, value func(r *rand.Rand, ts time.Time) any) func(r *rand.Rand, ts time.Time) any {
	return func(r *rand.Rand, ts time.Time) any {
		if r.Float64() >= share {
			return nil
		}
		return value(r, ts)
	}
}

// wideProperties are 20 properties of every kind, shaped like product
// analytics: some in every event, some in few, low and high cardinality.
func wideProperties() []wideProperty {
	refs := []string{"google", "newsletter", "direct", "twitter", "partner"}
	agents := []string{
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
		"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
	}
	tags := []string{"sale", "new", "eco", "gift", "bundle", "clearance", "premium", "kids", "outdoor", "tech"}
	var orderID int64 = 7_000_000
	props := []wideProperty{
		{"page", batch.String, func(r *rand.Rand, _ time.Time) any { return fmt.Sprintf("/products/%d", r.IntN(5000)) }},
		{"ref", batch.String, sometimes(0.9, func(r *rand.Rand, _ time.Time) any { return refs[r.IntN(len(refs))] })},
		{"session", batch.String, func(r *rand.Rand, _ time.Time) any { return fmt.Sprintf("s-%d", r.IntN(1_000_000)) }},
		{"search", batch.String, sometimes(0.1, func(r *rand.Rand, _ time.Time) any { return strings.Repeat("q", 3+r.IntN(20)) })},
		{"currency", batch.String, sometimes(0.3, func(r *rand.Rand, _ time.Time) any { return []string{"EUR", "USD", "GBP"}[r.IntN(3)] })},
		{"user_agent", batch.String, sometimes(0.8, func(r *rand.Rand, _ time.Time) any { return agents[r.IntN(len(agents))] })},
		{"price", batch.Float64, sometimes(0.3, func(r *rand.Rand, _ time.Time) any { return float64(r.IntN(50_000)) / 100 })},
		{"discount", batch.Float64, sometimes(0.05, func(r *rand.Rand, _ time.Time) any { return float64(r.IntN(50)) / 100 })},
		{"latitude", batch.Float64, sometimes(0.5, func(r *rand.Rand, _ time.Time) any { return 40 + r.Float64()*10 })},
		{"quantity", batch.Int64, sometimes(0.3, func(r *rand.Rand, _ time.Time) any { return int64(1 + r.IntN(5)) })},
		{"product_id", batch.Int64, sometimes(0.6, func(r *rand.Rand, _ time.Time) any { return int64(r.IntN(1_000_000)) })},
		{"order_id", batch.Int64, sometimes(0.1, func(r *rand.Rand, _ time.Time) any { orderID += int64(1 + r.IntN(3)); return orderID })},
		{"scroll_depth", batch.Int64, sometimes(0.4, func(r *rand.Rand, _ time.Time) any { return int64(r.IntN(101)) })},
		{"duration_ms", batch.Int64, sometimes(0.7, func(r *rand.Rand, _ time.Time) any { return int64(r.IntN(60_000)) })},
		{"logged_in", batch.Bool, func(r *rand.Rand, _ time.Time) any { return r.IntN(3) > 0 }},
		{"is_mobile", batch.Bool, func(r *rand.Rand, _ time.Time) any { return r.IntN(2) == 0 }},
		{"first_seen", batch.DateTime, sometimes(0.5, func(r *rand.Rand, ts time.Time) any {
			return ts.Add(-time.Duration(r.IntN(90*24*3600)) * time.Second)
		})},
		{"clicked_at", batch.DateTime, sometimes(0.4, func(r *rand.Rand, ts time.Time) any {
			return ts.Add(-time.Duration(r.IntN(5000)) * time.Millisecond)
		})},
		{"tags", batch.ArrayOf(batch.String), func(r *rand.Rand, _ time.Time) any {
			out := make([]any, r.IntN(5))
			for i := range out {
				out[i] = tags[r.IntN(len(tags))]
			}
			return out
		}},
		{"item_ids", batch.ArrayOf(batch.Int64), func(r *rand.Rand, _ time.Time) any {
			out := make([]any, r.IntN(4))
			for i := range out {
				if r.IntN(20) > 0 {
					out[i] = int64(r.IntN(1_000_000))
				}
			}
			return out
		}},
	}
	slices.SortFunc(props, func(a, b wideProperty) int { return strings.Compare(a.name, b.name) })
	return props
}

// wideBatch makes a projected batch of rows events in messages of perMsg
// events, with EVENTS sequences from 1000, whose properties are the 20
// wideProperties (their JSON in properties, their values in 20 typed
// columns); 1% of rows have a conflict, 2% an unpromoted path. The same
// for the same rows.
func wideBatch(shard, rows, perMsg int) *batch.Batch {
	r := rand.New(rand.NewPCG(uint64(rows), 2))
	events := sampleEvents(uint64(rows), rows)
	properties := wideProperties()
	cols := make([]batch.Column, len(properties))
	for i, p := range properties {
		cols[i] = batch.Column{Name: p.name, Kind: p.kind}
	}
	conflicts := make([]string, rows)
	unpromoted := make([][]string, rows)
	for i := range events {
		props := map[string]any{}
		for j, p := range properties {
			v := p.value(r, events[i].TS)
			var c batch.Column
			if p.kind.IsArray() {
				c = arrayCol(p.name, p.kind.Elem(), v.([]any))
			} else {
				c = scalarCol(p.name, p.kind, v)
			}
			appendRow(&cols[j], &c)
			if v != nil {
				props[p.name] = v
			}
		}
		if r.IntN(100) == 0 {
			conflicts[i] = `{"/price":"free"}`
		}
		if r.IntN(50) == 0 {
			unpromoted[i] = []string{"/extra/a", "/extra/b"}
		}
		raw, err := json.Marshal(props)
		if err != nil {
			panic(err)
		}
		events[i].Properties = string(raw)
	}
	b := &batch.Batch{Shard: shard}
	seq := uint64(1000)
	for i := 0; i < rows; i += perMsg {
		b.Append(seq, events[i:min(i+perMsg, rows)])
		seq++
	}
	b.Conflicts, b.Unpromoted, b.Typed = conflicts, unpromoted, cols
	return b
}

// appendRow appends the one row of row to c.
func appendRow(c, row *batch.Column) {
	c.Null = append(c.Null, row.Null...)
	c.Lens = append(c.Lens, row.Lens...)
	c.ElemNull = append(c.ElemNull, row.ElemNull...)
	c.Ints = append(c.Ints, row.Ints...)
	c.Floats = append(c.Floats, row.Floats...)
	c.Strs = append(c.Strs, row.Strs...)
}

// unprojected is b without its projection: the same rows as version 1.
func unprojected(b *batch.Batch) *batch.Batch {
	out := *b
	out.Conflicts, out.Unpromoted, out.Typed = nil, nil, nil
	return &out
}
