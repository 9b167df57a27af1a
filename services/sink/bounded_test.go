package sink_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/services/sink"
)

// boundedChunk is the most rows one INSERT ... SELECT of the fill puts in
// (about 25 s here): CI's 50,000,000 take two.
const boundedChunk = 25_000_000

// boundedRows is how many rows TestPresenceReadIsBounded fills the table
// with: 50,000,000 in CI; SURGE_BOUNDED_ROWS sets another count (the long
// mode: 1000000000, about 14 minutes of INSERT ... SELECT here by
// extrapolation).
func boundedRows(t *testing.T) uint64 {
	t.Helper()
	n := uint64(50_000_000)
	if v := os.Getenv("SURGE_BOUNDED_ROWS"); v != "" {
		var err error
		n, err = strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "SURGE_BOUNDED_ROWS")
	}
	return n
}

// syntheticEvent is row n of the synthetic table: shard n%8, EVENTS
// sequence n, one event a message, 100 tenants, 5 types, 4 events a
// second.
func syntheticEvent(n uint64) event.Event {
	ts := time.Unix(int64(1760000000+n/4), 0).UTC()
	return event.Event{
		EventID: "e" + strconv.FormatUint(n, 10), Tenant: "t" + strconv.FormatUint(n%100, 10),
		UserID: "u" + strconv.FormatUint(n%10000, 10), Type: "type" + strconv.FormatUint(n%5, 10),
		TS: ts, ReceivedAt: ts, Properties: "{}",
	}
}

// TestPresenceReadIsBounded: the sink's only read of events_local, the
// presence of a batch's EVENTS messages (at the start of a tenure, after
// an insert whose outcome is unknown, for a replayed dead letter), reads
// a number of rows that depends on the batch, not on the table: asserted
// from system.query_log's read_rows over a table of boundedRows rows. The
// read that it replaced, max(seq) of the shard, read every row.
func TestPresenceReadIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a table with tens of millions of rows")
	}
	n := boundedRows(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	st, addr := singleServerStore(ctx, t)

	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	start := time.Now()
	// In statements of at most boundedChunk rows: the server sends nothing
	// back until an insert is done, and the driver gives up on a connection
	// silent for its read timeout (5 minutes).
	for from := uint64(0); from < n; from += boundedChunk {
		count := min(boundedChunk, n-from)
		require.NoError(t, conn.Exec(ctx, fmt.Sprintf(`INSERT INTO surge.events_local (event_id, tenant, user_id, type, ts, received_at, properties, shard, seq)
SELECT concat('e', toString(g)), concat('t', toString(g %% 100)), concat('u', toString(g %% 10000)),
  concat('type', toString(g %% 5)), toDateTime(1760000000 + intDiv(g, 4)), toDateTime(1760000000 + intDiv(g, 4)),
  '{}', g %% 8, g
FROM (SELECT number + %d AS g FROM numbers(%d))`, from, count)), "rows %d-%d", from, from+count)
	}
	t.Logf("%d rows in events_local in %s", n, time.Since(start).Round(time.Millisecond))

	// A batch of shard 3's last 100 messages, as the sink would look it up
	// after a crash: all of it is there. Then the next 100, not there yet.
	const messages = 100
	batchOf := func(from uint64) *batch.Batch {
		b := &batch.Batch{Shard: 3}
		for seq, k := from, 0; k < messages; seq += 8 {
			b.Append(seq, []event.Event{syntheticEvent(seq)})
			k++
		}
		return b
	}
	last := n - 1 - (n-1-3)%8 // shard 3's last sequence
	held := batchOf(last - 8*(messages-1))
	missing := batchOf(last + 8)

	present, err := st.Present(ctx, 3, held)
	require.NoError(t, err)
	require.Len(t, present, messages, "every message of a landed batch is found")
	for _, seq := range held.Seq {
		require.Contains(t, present, seq)
	}
	present, err = st.Present(ctx, 3, missing)
	require.NoError(t, err)
	require.Empty(t, present)

	// What each read cost, from the server's own log. A query's entry is
	// queued after its answer is sent, so a flush right after the answer
	// can miss it: flushed and read again until both are there.
	var reads []uint64
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		reads = nil
		if !assert.NoError(c, conn.Exec(ctx, "SYSTEM FLUSH LOGS")) {
			return
		}
		rows, err := conn.Query(ctx, `SELECT read_rows FROM system.query_log
WHERE type = 2 AND query LIKE 'SELECT DISTINCT seq FROM surge.events_local%' ORDER BY event_time`)
		if !assert.NoError(c, err) {
			return
		}
		defer rows.Close()
		for rows.Next() {
			var r uint64
			assert.NoError(c, rows.Scan(&r))
			reads = append(reads, r)
		}
		assert.NoError(c, rows.Err())
		assert.Len(c, reads, 2, "one query a batch of %d messages", messages)
	}, 10*time.Second, 100*time.Millisecond)
	// At most one granule (index_granularity 8192) a message: the bound
	// follows the batch, never the table.
	const bound = messages * 8192
	for i, r := range reads {
		require.LessOrEqual(t, r, uint64(bound), "read %d: %d rows of a %d-row table", i, r, n)
	}
	t.Logf("presence reads over %d rows: %v rows read (bound %d)", n, reads, bound)
}

// singleServerStore starts one clickhouse-server and opens the sink's
// store on it, schema created; it returns the store and the server's
// address.
func singleServerStore(ctx context.Context, t *testing.T) (sink.Store, string) {
	t.Helper()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	ch, err := chserver.Start(ctx, t.TempDir(), chserver.Options{Shards: 1})
	require.NoError(t, err)
	t.Cleanup(ch.Stop)
	addr := ch.Servers[0].Addr()

	cfg := sink.DefaultConfig().ClickHouse
	cfg.Addrs = []string{addr}
	cfg.Database = "surge"
	st, err := sink.OpenStore(cfg, addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	require.NoError(t, st.EnsureSchema(ctx))
	return st, addr
}
