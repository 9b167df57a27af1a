package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/retry"
)

// storage is what a run's rows cost ClickHouse to write and to keep, as
// the design of typed columns measures it: the sink's inserts as the
// servers logged them, the parts they made and the table on disk.
type storage struct {
	// inserts are the sink's INSERTs the servers finished in the
	// throughput phase (system.query_log), with the time each took on its
	// server, the median and the 99th percentile, and their rows.
	inserts              int
	insertP50, insertP99 time.Duration
	insertRows           uint64
	// parts is the active parts of events_local on every server when the
	// run's merges have ended; filesPerPart the files in a part's
	// directory (every part of the table has the same: ClickHouse 18.16
	// writes each column to files of its own). parts is a mean where
	// runs are pooled.
	parts        float64
	filesPerPart int
	// rows and bytes are events_local on every server after OPTIMIZE
	// FINAL (one part per partition); properties and typed are the
	// compressed bytes of the properties column and of every typed
	// column together.
	rows, bytes, properties, typed uint64
}

// insertsLogged bounds how long insertsOf waits for the phase's rows to
// show in query_log.
const insertsLogged = 5 * time.Second

// insertsOf reads the sink's INSERTs every server (addrs) has finished
// so far into s: called the moment the throughput phase ends, on a fresh
// stack, they are the phase's, want rows. A server queues a query's entry
// after it has answered, so a flush right after the last insert can miss
// it: the logs are read again until they hold want rows, for at most
// insertsLogged, and then taken as they are.
func insertsOf(ctx context.Context, addrs []string, want uint64, s *storage) error {
	conns, closeAll, err := serverConns(addrs)
	if err != nil {
		return err
	}
	defer closeAll()
	var took []time.Duration
	var rows uint64
	for deadline := time.Now().Add(insertsLogged); ; {
		took, rows = nil, 0
		for i, ch := range conns {
			t, n, err := sinkInserts(ctx, ch)
			if err != nil {
				return fmt.Errorf("sink inserts on %s: %w", addrs[i], err)
			}
			took, rows = append(took, t...), rows+n
		}
		if rows >= want || time.Now().After(deadline) || !retry.Sleep(ctx, 100*time.Millisecond) {
			break
		}
	}
	s.insertRows, s.inserts = rows, len(took)
	if len(took) > 0 {
		slices.Sort(took)
		s.insertP50, s.insertP99 = took[len(took)/2], took[(len(took)*99)/100]
	}
	return nil
}

// tablesOf optimizes db.events_local on every server (addrs) and adds
// what it holds to s.
func tablesOf(ctx context.Context, addrs []string, db string, s *storage) error {
	conns, closeAll, err := serverConns(addrs)
	if err != nil {
		return err
	}
	defer closeAll()
	for i, ch := range conns {
		if err := tableSize(ctx, ch, db, s); err != nil {
			return fmt.Errorf("events_local on %s: %w", addrs[i], err)
		}
	}
	return nil
}

// sinkInserts are the durations and the rows of the sink's INSERTs that
// ch has finished. type 2 is QueryFinish: an Enum on current servers, a
// number on 18.16, and CAST to Int8 reads both as the number. The statements an insert runs
// first (the table's columns, an ALTER) carry its query id too.
func sinkInserts(ctx context.Context, ch driver.Conn) ([]time.Duration, uint64, error) {
	if err := ch.Exec(ctx, "SYSTEM FLUSH LOGS"); err != nil {
		return nil, 0, fmt.Errorf("flush logs: %w", err)
	}
	rows, err := ch.Query(ctx, "SELECT query_duration_ms, written_rows FROM system.query_log "+
		"WHERE CAST(type, 'Int8') = 2 AND startsWith(query_id, 'surge-sink-') AND startsWith(query, 'INSERT INTO')")
	if err != nil {
		return nil, 0, fmt.Errorf("read query_log: %w", err)
	}
	defer rows.Close()
	var took []time.Duration
	var written uint64
	for rows.Next() {
		var ms, n uint64
		if err := rows.Scan(&ms, &n); err != nil {
			return nil, 0, fmt.Errorf("read query_log: %w", err)
		}
		took = append(took, time.Duration(ms)*time.Millisecond)
		written += n
	}
	return took, written, rows.Err()
}

// tableSize adds ch's events_local to s: its active parts, then, after
// OPTIMIZE FINAL, its rows, bytes and columns, and the files of a part.
func tableSize(ctx context.Context, ch driver.Conn, db string, s *storage) error {
	const parts = "FROM system.parts WHERE database = ? AND table = 'events_local' AND active"
	var n uint64
	if err := ch.QueryRow(ctx, "SELECT count() "+parts, db).Scan(&n); err != nil {
		return fmt.Errorf("count parts: %w", err)
	}
	s.parts += float64(n)
	if err := ch.Exec(ctx, "OPTIMIZE TABLE "+db+".events_local FINAL"); err != nil {
		return fmt.Errorf("optimize: %w", err)
	}
	var rows, bytes uint64
	var path string
	if err := ch.QueryRow(ctx, "SELECT sum(rows), sum(bytes_on_disk), any(path) "+parts, db).Scan(&rows, &bytes, &path); err != nil {
		return fmt.Errorf("read parts: %w", err)
	}
	s.rows, s.bytes = s.rows+rows, s.bytes+bytes
	var props, typed uint64
	if err := ch.QueryRow(ctx, "SELECT sumIf(data_compressed_bytes, name = 'properties'), sumIf(data_compressed_bytes, startsWith(name, 'p_')) "+
		"FROM system.columns WHERE database = ? AND table = 'events_local'", db).Scan(&props, &typed); err != nil {
		return fmt.Errorf("read columns: %w", err)
	}
	s.properties, s.typed = s.properties+props, s.typed+typed
	if path == "" { // no rows on this server
		return nil
	}
	// The bench's servers run on this machine: the part is a directory here.
	files, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("files of a part: %w", err)
	}
	s.filesPerPart = max(s.filesPerPart, len(files))
	return nil
}

// add pools o, one of n runs, into s: counts and bytes summed, times and
// parts averaged, files a part the most.
func (s *storage) add(o storage, n float64) {
	s.inserts += o.inserts
	s.insertRows += o.insertRows
	s.insertP50 += time.Duration(float64(o.insertP50) / n)
	s.insertP99 += time.Duration(float64(o.insertP99) / n)
	s.parts += o.parts / n
	s.filesPerPart = max(s.filesPerPart, o.filesPerPart)
	s.rows += o.rows
	s.bytes += o.bytes
	s.properties += o.properties
	s.typed += o.typed
}

// perEvent is v over the table's rows.
func (s storage) perEvent(v uint64) float64 {
	if s.rows == 0 {
		return 0
	}
	return float64(v) / float64(s.rows)
}

// rowsPerInsert is the mean rows of the sink's logged inserts.
func (s storage) rowsPerInsert() float64 {
	if s.inserts == 0 {
		return 0
	}
	return float64(s.insertRows) / float64(s.inserts)
}

// storageReport prints s under a run's summary.
func storageReport(s storage) string {
	var b strings.Builder
	fmt.Fprintf(&b, "  ClickHouse's view of the run (its own logs and parts, every server):\n")
	fmt.Fprintf(&b, "    sink inserts, throughput phase  %d of %d rows in all, %.0f each; on the server p50 %s, p99 %s (system.query_log)\n",
		s.inserts, s.insertRows, s.rowsPerInsert(), fmtMillis(s.insertP50), fmtMillis(s.insertP99))
	fmt.Fprintf(&b, "    events_local                    %.0f active parts after the run's merges, %d files a part\n", s.parts, s.filesPerPart)
	fmt.Fprintf(&b, "    on disk after OPTIMIZE FINAL    %.1f bytes an event (%d rows); properties %.1f, typed columns %.1f compressed\n",
		s.perEvent(s.bytes), s.rows, s.perEvent(s.properties), s.perEvent(s.typed))
	return b.String()
}
