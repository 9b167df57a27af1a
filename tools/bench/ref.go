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
	// server at once, with the sink's insert statement, as many rows as
	// the sink leg inserts: what the servers take of this load, merges
	// and all, when nothing else runs; the rate the sink's shares are
	// taken of.
	bulk    float64
	bulkCPU float64 // ClickHouse's CPU seconds per 1M rows of bulk, its merges included
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
	// referenceRows caps the rows the bulk reference reads back; it
	// inserts them again and again up to the rows it was asked for.
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
// server (addrs); the bulk inserts total rows in all. cpu reads
// ClickHouse's CPU seconds so far; bulkCPU is what ClickHouse used from
// the first insert until the merges they started ended, repeatedCPU
// what it used while its inserts ran.
func clickhouseReference(ctx context.Context, addrs []string, db string, total int, cpu func() float64) (reference, error) {
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

	// The repeated block first: the bulk's merges would run into it.
	ch := conns[0]
	syn := syntheticBlock()
	const blocks = 50
	start, cpu0 := time.Now(), cpu()
	for range blocks {
		if err := syn.insert(ctx, ch, refDB, 0, syn.n); err != nil {
			return ref, fmt.Errorf("repeated bulk insert: %w", err)
		}
	}
	ref.repeated = float64(blocks*syn.n) / time.Since(start).Seconds()
	ref.repeatedCPU = perMillion(cpu()-cpu0, blocks*syn.n)

	// The bulk starts on an idle ClickHouse, as the sink leg does.
	if _, err := settleMerges(ctx, addrs); err != nil {
		return ref, err
	}
	own := make([]*rowSet, len(conns))
	for i, ch := range conns {
		rs, err := ownRows(ctx, ch, db, referenceRows/len(conns))
		if err != nil {
			return ref, err
		}
		if rs.n == 0 {
			return ref, fmt.Errorf("bulk insert: no rows in %s.events_local on %s", db, addrs[i])
		}
		own[i] = rs
	}
	// Each server takes its share of total, its own rows over and over.
	quota := max(total/len(conns), 1)
	var inserted atomic.Int64
	start, cpu0 = time.Now(), cpu()
	g, gctx := errgroup.WithContext(ctx)
	for i, ch := range conns {
		var next atomic.Int64 // the next block of server i
		for range referenceConns {
			g.Go(func() error {
				for {
					from, to, ok := referenceBlock(int(next.Add(1)-1), own[i].n, quota)
					if !ok {
						return nil
					}
					if err := own[i].insert(gctx, ch, refDB, from, to); err != nil {
						return fmt.Errorf("bulk insert into %s: %w", addrs[i], err)
					}
					inserted.Add(int64(to - from))
				}
			})
		}
	}
	if err := g.Wait(); err != nil {
		return ref, err
	}
	ref.bulk = float64(inserted.Load()) / time.Since(start).Seconds()
	if _, err := settleMerges(ctx, addrs); err != nil {
		return ref, err
	}
	ref.bulkCPU = perMillion(cpu()-cpu0, int(inserted.Load()))

	start = time.Now()
	n := 0
	for time.Since(start) < 3*time.Second {
		if err := own[0].insert(ctx, ch, refDB, n%own[0].n, n%own[0].n+1); err != nil {
			return ref, fmt.Errorf("single-row insert: %w", err)
		}
		n++
	}
	ref.single = float64(n) / time.Since(start).Seconds()
	return ref, nil
}

// referenceBlock is block k of quota rows taken from n rows over and
// over: rows from..to of the n, at most 10,000, cut where the n end and
// where the quota does; ok is false past the quota.
func referenceBlock(k, n, quota int) (from, to int, ok bool) {
	perLap := (n + 9_999) / 10_000
	lap, j := k/perLap, k%perLap
	from = j * 10_000
	before := lap*n + from // rows of the blocks before k
	if before >= quota {
		return 0, 0, false
	}
	return from, min(from+10_000, n, from+quota-before), true
}

// rowSet is rows of events_local held column by column: every base
// column in the order of sink.Columns, then the typed columns named, each
// a slice of the type the driver scans it into and appends from.
type rowSet struct {
	typed []string
	cols  []reflect.Value
	n     int
}

// ownRows reads up to limit rows of events_local on one server, with
// every typed column: the run's own data, as the sink sent it. Each
// shard's EVENTS messages come in the order the sink inserted them, and
// the rows of a message in the order of their ids' hash: a part gives
// them back sorted by the table's key, which ClickHouse would sort again
// for less than it does the load's order (in one pair of runs the bulk
// reference cost it 2.6 s of CPU per million rows read in the part's
// order, 3.3 s shuffled).
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
	rows, err := ch.Query(ctx, fmt.Sprintf("SELECT %s FROM %s.events_local ORDER BY shard, seq, sipHash64(event_id) LIMIT %d",
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
