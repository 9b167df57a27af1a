package bench

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"golang.org/x/sync/errgroup"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/services/sink"
)

// reference is what ClickHouse alone does on the same machine, in rows/s,
// and what its bulk inserts cost it.
type reference struct {
	// bulk inserts the run's own rows again (ownRows), each server its
	// own, in 10,000-row blocks over referenceConns connections per
	// server at once, with the sink's insert statement: what the servers
	// take of this load when nothing else runs, the rate the sink's
	// shares are taken of.
	bulk    float64
	bulkCPU float64 // ClickHouse's CPU seconds per 1M rows of bulk
	// repeated inserts one synthetic 10,000-row block into server 0 again
	// and again over one connection, as the bench did before it read the
	// run's rows: identical values compress and sort for next to nothing,
	// so it is faster per connection than any real load and varies the
	// most from run to run. Kept beside bulk so that figures taken with
	// it compare.
	repeated    float64
	repeatedCPU float64
	// single inserts the run's rows into server 0 one per insert.
	single float64
}

const (
	// referenceRows caps the rows the bulk reference inserts: a second
	// or two, long enough to ride over a merge starting.
	referenceRows = 500_000
	// referenceConns is the bulk reference's connections per server: the
	// inserts the sink has in flight on each server at the bench's default
	// of 8 shards over 2 servers. Measured here against one and two a
	// server, four took the most of the same rows (1.16-1.19x the repeated
	// block's rate in the same runs, against 0.99-1.02x and 0.90-1.14x).
	referenceConns = 4
)

// clickhouseReference measures ClickHouse alone: bulk and single-row
// inserts through the driver's batch API, with the sink's own insert
// statement into a copy of events_local in a database of its own on each
// server (addrs). cpu reads ClickHouse's CPU seconds so far; the CPU
// figures are what the bulk inserts cost while they ran (not the merges
// after).
func clickhouseReference(ctx context.Context, addrs []string, db string, cpu func() float64) (reference, error) {
	var ref reference
	refDB := db + "_bench_reference"
	conns := make([]driver.Conn, len(addrs))
	for i, addr := range addrs {
		ch, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, MaxOpenConns: referenceConns,
			Settings: clickhouse.Settings{"max_execution_time": 60}})
		if err != nil {
			return ref, err
		}
		defer ch.Close()
		conns[i] = ch
		if err := ch.Exec(ctx, "DROP DATABASE IF EXISTS "+refDB); err != nil {
			return ref, err
		}
		if err := ch.Exec(ctx, "CREATE DATABASE "+refDB); err != nil {
			return ref, err
		}
		defer func() { _ = ch.Exec(context.Background(), "DROP DATABASE IF EXISTS "+refDB) }()
		if err := ch.Exec(ctx, "CREATE TABLE "+refDB+".events_local AS "+db+".events_local"); err != nil {
			return ref, err
		}
	}

	own := make([]*rowSet, len(conns))
	rows := 0
	for i, ch := range conns {
		rs, err := ownRows(ctx, ch, db, referenceRows/len(conns))
		if err != nil {
			return ref, err
		}
		own[i], rows = rs, rows+rs.n
	}
	if rows == 0 {
		return ref, fmt.Errorf("bulk insert: no rows in %s.events_local", db)
	}
	start, cpu0 := time.Now(), cpu()
	g, gctx := errgroup.WithContext(ctx)
	for i, ch := range conns {
		var next atomic.Int64 // the next block of server i's rows
		for range referenceConns {
			g.Go(func() error {
				for {
					from := int(next.Add(1)-1) * 10_000
					if from >= own[i].n {
						return nil
					}
					if err := own[i].insert(gctx, ch, refDB, from, min(from+10_000, own[i].n)); err != nil {
						return fmt.Errorf("bulk insert into %s: %w", addrs[i], err)
					}
				}
			})
		}
	}
	if err := g.Wait(); err != nil {
		return ref, err
	}
	ref.bulk = float64(rows) / time.Since(start).Seconds()
	ref.bulkCPU = perMillion(cpu()-cpu0, rows)

	ch := conns[0]
	syn := syntheticBlock()
	const blocks = 50
	start, cpu0 = time.Now(), cpu()
	for range blocks {
		if err := syn.insert(ctx, ch, refDB, 0, syn.n); err != nil {
			return ref, fmt.Errorf("repeated bulk insert: %w", err)
		}
	}
	ref.repeated = float64(blocks*syn.n) / time.Since(start).Seconds()
	ref.repeatedCPU = perMillion(cpu()-cpu0, blocks*syn.n)

	start = time.Now()
	n := 0
	for time.Since(start) < 3*time.Second && own[0].n > 0 {
		if err := own[0].insert(ctx, ch, refDB, n%own[0].n, n%own[0].n+1); err != nil {
			return ref, fmt.Errorf("single-row insert: %w", err)
		}
		n++
	}
	ref.single = float64(n) / time.Since(start).Seconds()
	return ref, nil
}

// rowSet is rows of events_local held column by column: every base
// column in the order of sink.Columns, then the typed columns named, each
// a slice of the type the driver scans it into and appends from.
type rowSet struct {
	typed []string
	cols  []reflect.Value
	n     int
}

// ownRows reads up to limit rows of events_local on one server, each
// shard's in the order the sink inserted them, with every typed column:
// the run's own data, as the sink sent it.
func ownRows(ctx context.Context, ch driver.Conn, db string, limit int) (*rowSet, error) {
	rs := &rowSet{}
	names, err := ch.Query(ctx, "SELECT name FROM system.columns WHERE database = ? AND table = 'events_local'", db)
	if err != nil {
		return nil, fmt.Errorf("columns of events_local: %w", err)
	}
	for names.Next() {
		var name string
		if err := names.Scan(&name); err != nil {
			names.Close()
			return nil, fmt.Errorf("columns of events_local: %w", err)
		}
		if !batch.IsBaseColumn(name) {
			rs.typed = append(rs.typed, name)
		}
	}
	names.Close()
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("columns of events_local: %w", err)
	}

	all := append(append([]string{}, sink.Columns...), rs.typed...)
	rows, err := ch.Query(ctx, fmt.Sprintf("SELECT %s FROM %s.events_local ORDER BY shard, seq LIMIT %d",
		strings.Join(all, ", "), db, limit))
	if err != nil {
		return nil, fmt.Errorf("read rows of events_local: %w", err)
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	for _, t := range types {
		rs.cols = append(rs.cols, reflect.MakeSlice(reflect.SliceOf(t.ScanType()), 0, limit))
	}
	dest := make([]any, len(types))
	for rows.Next() {
		ptrs := make([]reflect.Value, len(types))
		for i, t := range types {
			ptrs[i] = reflect.New(t.ScanType())
			dest[i] = ptrs[i].Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("read rows of events_local: %w", err)
		}
		for i, p := range ptrs {
			rs.cols[i] = reflect.Append(rs.cols[i], p.Elem())
		}
		rs.n++
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read rows of events_local: %w", err)
	}
	return rs, nil
}

// syntheticBlock is one block of 10,000 rows alike but for their ids, as
// the bench's reference used to insert.
func syntheticBlock() *rowSet {
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
	rs := &rowSet{n: b.Len()}
	for _, c := range batch.BaseColumns {
		rs.cols = append(rs.cols, reflect.ValueOf(c.Values(b)))
	}
	return rs
}

// insert sends rows from..to of rs as one block into database's
// events_local.
func (rs *rowSet) insert(ctx context.Context, ch driver.Conn, database string, from, to int) error {
	pb, err := ch.PrepareBatch(ctx, sink.InsertQuery(database, rs.typed...))
	if err != nil {
		return err
	}
	defer func() {
		if !pb.IsSent() {
			_ = pb.Abort()
		}
	}()
	for i, col := range rs.cols {
		part := col.Slice(from, to)
		if part.Type().Elem().Kind() != reflect.Slice {
			if err := pb.Column(i).Append(part.Interface()); err != nil {
				return fmt.Errorf("append column %d: %w", i, err)
			}
			continue
		}
		// Arrays row by row, as the sink appends them: the driver takes a
		// whole [][]T only by reflection on every row.
		for r := range part.Len() {
			if err := pb.Column(i).AppendRow(part.Index(r).Interface()); err != nil {
				return fmt.Errorf("append column %d: %w", i, err)
			}
		}
	}
	return pb.Send()
}
