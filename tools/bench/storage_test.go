package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/chserver"
)

// TestStorageReadsTheServers inserts known blocks into events_local on two
// servers, some as the sink (its query ids), one as something else, and
// reads them back as the bench does: the sink's inserts from query_log
// with their rows and times, the parts before OPTIMIZE FINAL, the rows,
// bytes and files of the table after it.
func TestStorageReadsTheServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two clickhouse-servers")
	}
	ctx := context.Background()
	c, err := chserver.StartCluster(ctx, t.TempDir(), 2)
	require.NoError(t, err)
	t.Cleanup(c.Stop)
	addrs := c.Addrs()
	conns := make([]driver.Conn, len(addrs))
	for i, addr := range addrs {
		conns[i], err = clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = conns[i].Close() })
		for _, q := range []string{
			"CREATE DATABASE s",
			"CREATE TABLE s.events_local (ts DateTime, properties String, p_a Nullable(Int64), p_b Nullable(String)) " +
				"ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY ts",
		} {
			require.NoError(t, conns[i].Exec(ctx, q), q)
		}
	}
	// Each insert of a server in a month of its own: a partition of its
	// own, so no merge joins their parts before they are counted.
	insert := func(server int, queryID string, rows int, month time.Month) {
		t.Helper()
		qctx := clickhouse.Context(ctx, clickhouse.WithQueryID(queryID), clickhouse.WithSettings(clickhouse.Settings{"log_queries": 1}))
		bt, err := conns[server].PrepareBatch(qctx, "INSERT INTO s.events_local")
		require.NoError(t, err)
		for r := range rows {
			a := int64(r)
			b := strings.Repeat("x", r)
			require.NoError(t, bt.Append(time.Date(2026, month, 1, 0, 0, r, 0, time.UTC), fmt.Sprintf(`{"a":%d,"b":%q}`, r, b), &a, &b))
		}
		require.NoError(t, bt.Send())
	}
	insert(0, "surge-sink-b1-1", 3, time.January)
	insert(0, "surge-sink-b2-1", 2, time.February)
	insert(0, "bench-reference-1", 4, time.March) // not the sink's: a part, but no insert of its
	insert(1, "surge-sink-b3-2", 1, time.January)
	// What the sink asks before an insert carries the insert's query id.
	qctx := clickhouse.Context(ctx, clickhouse.WithQueryID("surge-sink-b4-1"), clickhouse.WithSettings(clickhouse.Settings{"log_queries": 1}))
	var n uint64
	require.NoError(t, conns[1].QueryRow(qctx, "SELECT count() FROM system.columns WHERE database = 's'").Scan(&n))
	require.Equal(t, uint64(4), n)

	var s storage
	require.NoError(t, insertsOf(ctx, addrs, 6, &s))
	assert.Equal(t, 3, s.inserts)
	assert.Equal(t, uint64(6), s.insertRows)
	assert.InDelta(t, 2.0, s.rowsPerInsert(), 1e-9)
	// The times are the servers' own, each a row of query_log.
	var took []time.Duration
	for _, ch := range conns {
		rows, err := ch.Query(ctx, "SELECT query_duration_ms FROM system.query_log WHERE CAST(type, 'Int8') = 2 AND query_id IN ('surge-sink-b1-1', 'surge-sink-b2-1', 'surge-sink-b3-2')")
		require.NoError(t, err)
		for rows.Next() {
			var ms uint64
			require.NoError(t, rows.Scan(&ms))
			took = append(took, time.Duration(ms)*time.Millisecond)
		}
		require.NoError(t, rows.Err())
		rows.Close()
	}
	slices.Sort(took)
	require.Len(t, took, 3)
	assert.Equal(t, took[1], s.insertP50)
	assert.Equal(t, took[2], s.insertP99)

	require.NoError(t, tablesOf(ctx, addrs, "s", &s))
	assert.InDelta(t, 4.0, s.parts, 1e-9) // 3 on the first server, 1 on the second
	assert.Equal(t, uint64(10), s.rows)
	// ClickHouse 18.16 (the servers the bench starts) writes a .bin and
	// a .mrk a column, a Nullable column's null map as two more, and six
	// files of the part: checksums, columns, count, primary index, the
	// partition's value and its min-max index of ts.
	assert.Equal(t, 2+2+4+4+6, s.filesPerPart)
	var bytes, props, typed uint64
	for _, ch := range conns {
		var b, p, ty uint64
		require.NoError(t, ch.QueryRow(ctx, "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 's' AND active").Scan(&b))
		require.NoError(t, ch.QueryRow(ctx, "SELECT sumIf(data_compressed_bytes, name = 'properties'), sumIf(data_compressed_bytes, name IN ('p_a', 'p_b')) FROM system.columns WHERE database = 's'").Scan(&p, &ty))
		bytes, props, typed = bytes+b, props+p, typed+ty
	}
	assert.Equal(t, bytes, s.bytes)
	assert.Equal(t, props, s.properties)
	assert.Equal(t, typed, s.typed)
	assert.InDelta(t, float64(bytes)/10, s.perEvent(s.bytes), 1e-9)

	out := storageReport(s)
	assert.Contains(t, out, fmt.Sprintf("sink inserts, throughput phase  3 of 6 rows in all, 2 each; on the server p50 %s, p99 %s (system.query_log)\n",
		fmtMillis(took[1]), fmtMillis(took[2])))
	assert.Contains(t, out, "events_local                    4 active parts after the run's merges, 18 files a part\n")
	assert.Contains(t, out, fmt.Sprintf("on disk after OPTIMIZE FINAL    %.1f bytes an event (10 rows); properties %.1f, typed columns %.1f compressed\n",
		float64(bytes)/10, float64(props)/10, float64(typed)/10))
}
