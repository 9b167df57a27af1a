package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/services/sink"
)

// clickhouseReference measures ClickHouse alone on the same machine: bulk
// inserts of 10,000-row blocks and single-row inserts, both through the
// driver's batch API over one connection, with the sink's own insert
// statement into a copy of events_local in a database of its own. cpu
// reads ClickHouse's CPU seconds so far; bulkCPU is what the bulk inserts
// cost per 1M rows while they ran (not the merges after).
func clickhouseReference(ctx context.Context, ch driver.Conn, db string, cpu func() float64) (bulk, single, bulkCPU float64, err error) {
	refDB := db + "_bench_reference"
	if err := ch.Exec(ctx, "DROP DATABASE IF EXISTS "+refDB); err != nil {
		return 0, 0, 0, err
	}
	if err := ch.Exec(ctx, "CREATE DATABASE "+refDB); err != nil {
		return 0, 0, 0, err
	}
	defer func() { _ = ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+refDB) }()
	if err := ch.Exec(ctx, "CREATE TABLE "+refDB+".events_local AS "+db+".events_local"); err != nil {
		return 0, 0, 0, err
	}

	b := &batch.Batch{}
	now := time.Now().UnixMicro()
	for i := range 10_000 {
		b.EventID = append(b.EventID, fmt.Sprintf("ref-%d", i))
		b.Tenant = append(b.Tenant, "default")
		b.UserID = append(b.UserID, fmt.Sprintf("user-%d", i%1000))
		b.Type = append(b.Type, "page_view")
		b.TS = append(b.TS, now)
		b.ReceivedAt = append(b.ReceivedAt, now)
		b.Properties = append(b.Properties, `{"path":"/p/1","ref":"campaign-1","ms":100}`)
		b.Seq = append(b.Seq, uint64(i))
	}
	insert := func(from, to int) error {
		pb, err := ch.PrepareBatch(ctx, sink.InsertQuery(refDB))
		if err != nil {
			return err
		}
		defer func() {
			if !pb.IsSent() {
				_ = pb.Abort()
			}
		}()
		// Rows from..to of b, appended as the sink appends a batch.
		part := &batch.Batch{
			EventID: b.EventID[from:to], Tenant: b.Tenant[from:to], UserID: b.UserID[from:to], Type: b.Type[from:to],
			TS: b.TS[from:to], ReceivedAt: b.ReceivedAt[from:to], Properties: b.Properties[from:to], Seq: b.Seq[from:to],
		}
		if err := sink.AppendBatch(pb, part); err != nil {
			return err
		}
		return pb.Send()
	}
	start, cpu0 := time.Now(), cpu()
	const blocks = 50 // 500,000 rows: about a second, long enough to ride over a merge starting
	for range blocks {
		if err := insert(0, 10_000); err != nil {
			return 0, 0, 0, fmt.Errorf("bulk insert: %w", err)
		}
	}
	bulk = float64(blocks*10_000) / time.Since(start).Seconds()
	bulkCPU = perMillion(cpu()-cpu0, blocks*10_000)

	start = time.Now()
	n := 0
	for time.Since(start) < 3*time.Second {
		if err := insert(n%10_000, n%10_000+1); err != nil {
			return 0, 0, 0, fmt.Errorf("single-row insert: %w", err)
		}
		n++
	}
	single = float64(n) / time.Since(start).Seconds()
	return bulk, single, bulkCPU, nil
}
