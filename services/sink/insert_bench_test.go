package sink_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/services/sink"
)

// benchBatch is a batch of shard 0 with rows rows of ~230 bytes, from
// sequence first on, one row a sequence. Inserting it again and again
// stores it again and again: a store does not look at the watermark.
func benchBatch(first uint64, rows int) *batch.Batch {
	b := &batch.Batch{Shard: 0, FirstSeq: first, LastSeq: first + uint64(rows) - 1}
	now := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC).UnixMicro()
	for i := range rows {
		b.EventID = append(b.EventID, fmt.Sprintf("01HZXW%020d", first+uint64(i)))
		b.Tenant = append(b.Tenant, "tenant-1")
		b.UserID = append(b.UserID, fmt.Sprintf("user-%d", i%1000))
		b.Type = append(b.Type, "page_view")
		b.TS = append(b.TS, now)
		b.ReceivedAt = append(b.ReceivedAt, now)
		b.Properties = append(b.Properties, `{"path":"/products/42","ref":"campaign-1","ms":100,"plan":"pro","n":3}`)
		b.Seq = append(b.Seq, first+uint64(i))
	}
	return b
}

// BenchmarkInsert inserts 10,000-row batches through the sink's store
// into one real server: untyped (as before typed columns), and with 5
// typed columns (the default types, every row filled).
func BenchmarkInsert(b *testing.B) {
	ctx := context.Background()
	if err := chserver.EnsureInstalled(ctx, b.Logf); err != nil {
		b.Fatal(err)
	}
	ch, err := chserver.StartCluster(ctx, b.TempDir(), 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ch.Stop)
	cfg := sink.DefaultConfig().ClickHouse
	cfg.Addrs = ch.Addrs()
	st, err := sink.OpenStore(cfg, cfg.Addrs[0])
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	if err := st.EnsureSchema(ctx); err != nil {
		b.Fatal(err)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: cfg.Addrs})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })

	const rows = 10_000
	for _, typed := range []bool{false, true} {
		b.Run(fmt.Sprintf("typed=%t", typed), func(b *testing.B) {
			if err := conn.Exec(ctx, "TRUNCATE TABLE surge.events_local"); err != nil {
				b.Fatal(err)
			}
			bt := benchBatch(1, rows)
			if typed {
				typedColumns(bt)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := st.Insert(ctx, bt); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*rows)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// typedColumns projects b as the batcher would its properties.
func typedColumns(b *batch.Batch) {
	n := b.Len()
	col := func(name string, kind batch.Kind) batch.Column {
		return batch.Column{Name: name, Kind: kind, Null: make([]bool, n)}
	}
	ms, num := col("p_ms", batch.Int64), col("p_n", batch.Int64)
	path, plan, ref := col("p_path", batch.String), col("p_plan", batch.String), col("p_ref", batch.String)
	for range n {
		ms.Ints = append(ms.Ints, 100)
		num.Ints = append(num.Ints, 3)
		path.Strs = append(path.Strs, "/products/42")
		plan.Strs = append(plan.Strs, "pro")
		ref.Strs = append(ref.Strs, "campaign-1")
	}
	b.Conflicts = make([]string, n)
	b.Unpromoted = make([][]string, n)
	b.Typed = []batch.Column{ms, num, path, plan, ref}
}
