package chaos

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/tools/stack"
)

// prefillEnv sets how many synthetic rows the crash-loop test puts in
// events_local before its load starts (issue 18: every shard resumes
// within resumeWithin of ready on a big table as on an empty one). 0, the
// default, fills nothing; `go tool task chaos:crashloop:billion` fills
// 1,000,000,000.
const prefillEnv = "SURGE_CRASHLOOP_PREFILL_ROWS"

// ownRows is the condition on events_local that keeps the test's own rows
// and leaves out the synthetic ones, whose tenants t0..t99 all sort
// within ['t0', 't99'] and the test's ("default") before: a range on the
// first column of the sorting key, so a server skips the synthetic
// granules instead of reading them.
const ownRows = "(tenant < 't0' OR tenant > 't99')"

// prefillRows reads prefillEnv; 0 when unset.
func prefillRows(t *testing.T) uint64 {
	t.Helper()
	v := os.Getenv(prefillEnv)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 64)
	require.NoError(t, err, prefillEnv)
	return n
}

// prefill puts rows synthetic rows into events_local, split across the
// ClickHouse servers of info, and logs how long it took and each table's
// row count. The sink must have made its schema (the stack is ready) and
// no event may have been sent yet: the audit of inserts goes in after it,
// so that its view copies none of these rows.
//
// The rows are those of the sink's bounded-read test (services/sink,
// SURGE_BOUNDED_ROWS): row g is event 'e<g>' of tenant 't<g%100>', user
// 'u<g%10000>', type 'type<g%5>', properties '{}', shard g%8, EVENTS
// sequence g, 4 a second. Two changes: each row goes to the server that
// owns its shard, as the sink would have put it, so rows is the total,
// split across the servers (the same count on each would give each server
// rows of shards it does not hold, which no sink reads); and the seconds
// end at the fill's start rather than begin at 1760000000, so the newest
// rows share the current month's partition with the test's events, which
// is where the sink's presence reads go.
// None of them can be taken for one of the test's: those are tenant
// "default", type "crashloop", ids "cl-<r>-<i>", and a presence read
// (sink.PresenceQuery) matches (tenant, type, ts, event_id) exactly.
func prefill(t *testing.T, info stack.Info, dir string, rows uint64) {
	t.Helper()
	checkPrefillDisk(t, info, dir, rows)
	servers := info.ClickHouse
	require.NotEmpty(t, servers, "%s names no ClickHouse server", stack.InfoFile)
	require.Len(t, info.HTTP, len(servers), "native and HTTP addresses of the ClickHouse servers")
	// Row g's shard is g%shards and that shard's server is
	// (g%shards)%len(servers) (the sink's ServerOf without ShardServers):
	// g%len(servers) when len(servers) divides shards.
	require.Zero(t, shards%len(servers), "%d shards on %d ClickHouse servers", shards, len(servers))

	start := time.Now()
	first := start.Unix() - int64((rows-1)/4) // the first row's second
	t.Logf("crashloop: filling events_local with %d synthetic rows on %d ClickHouse servers (%s)", rows, len(servers), prefillEnv)
	took := make([]time.Duration, len(servers))
	g, ctx := errgroup.WithContext(t.Context())
	for i, addr := range servers {
		n := (rows + uint64(len(servers)-1-i)) / uint64(len(servers)) // the g < rows with g%len(servers) == i
		g.Go(func() error {
			begin := time.Now()
			if err := fillServer(ctx, addr, info.Database, i, len(servers), n, first); err != nil {
				return fmt.Errorf("fill %s: %w", addr, err)
			}
			took[i] = time.Since(begin)
			return nil
		})
	}
	require.NoError(t, g.Wait())
	elapsed := time.Since(start)

	var total uint64
	for i, addr := range info.HTTP {
		out, err := chserver.Query(addr, "SELECT count() FROM "+info.Database+".events_local")
		require.NoError(t, err, "rows on %s", addr)
		n, err := strconv.ParseUint(out, 10, 64)
		require.NoError(t, err, "rows on %s: %q", addr, out)
		// What a billion rows take on disk, for whoever runs the long mode.
		parts, err := chserver.Query(addr, "SELECT count(), sum(bytes_on_disk) FROM system.parts WHERE database = '"+info.Database+"' AND table = 'events_local' AND active")
		if err != nil {
			parts = err.Error()
		}
		t.Logf("crashloop: server %d (%s): %d rows in events_local, filled in %s; active parts, bytes: %s", i, addr, n, took[i].Round(time.Millisecond), parts)
		total += n
	}
	require.Equal(t, rows, total, "rows in events_local after the fill")
	t.Logf("crashloop: filled %d rows in %s (%.0f rows/s)", total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())
}

// prefillBytesPerRow is what a synthetic row takes on disk, twice: the
// rows of 200,000,000 took 16.8 bytes each here once filled, and a merge
// keeps the parts it replaced (old_parts_lifetime, 8 minutes) beside the
// new one.
const prefillBytesPerRow = 2 * 17

// checkPrefillDisk fails the test before the fill when the disk under
// dir (the stack's data folder) cannot hold rows synthetic rows and still
// let the embedded NATS server, at each restart, reserve the limits of the
// stack's streams: it reserves every stream's max bytes against 75% of
// the disk free at its start (nats-server's default max_file_store),
// and a stream it cannot reserve fails the restart ("insufficient storage
// resources available") long after the fill.
func checkPrefillDisk(t *testing.T, info stack.Info, dir string, rows uint64) {
	t.Helper()
	nc, js, err := connectJS(info)
	require.NoError(t, err)
	defer nc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var reserved int64
	list := js.ListStreams(ctx)
	for si := range list.Info() {
		reserved += max(si.Config.MaxBytes, 0)
	}
	require.NoError(t, list.Err(), "streams")
	var fs syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &fs), "free disk under %s", dir)
	free := int64(fs.Bavail) * fs.Bsize
	need := int64(rows) * prefillBytesPerRow
	const gb = 1e9
	t.Logf("crashloop: %.1f GB free under %s; the fill needs about %.1f GB, the streams reserve %.1f GB", float64(free)/gb, dir, float64(need)/gb, float64(reserved)/gb)
	if (free-need)/4*3 < reserved {
		t.Fatalf("crashloop: %d rows need about %.1f GB of the %.1f GB free; then NATS, which reserves the streams' %.1f GB against 75%% of the disk free at its start, could not restart: free %.1f GB more or fill fewer rows (%s)",
			rows, float64(need)/gb, float64(free)/gb, float64(reserved)/gb, (float64(need)+float64(reserved)*4/3-float64(free))/gb, prefillEnv)
	}
}

// fillChunk is the most rows one INSERT ... SELECT of fillServer puts in:
// the server sends nothing back until its insert is done, and the
// driver gives up on a connection silent for its read timeout (5 minutes;
// a server here inserts about a million of these rows a second).
const fillChunk = 50_000_000

// fillServer inserts into database.events_local on the server at addr
// (native) the n synthetic rows g = k*servers+i, k < n, their seconds
// from first, in statements of at most fillChunk rows.
func fillServer(ctx context.Context, addr, database string, i, servers int, n uint64, first int64) error {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	for from := uint64(0); from < n; from += fillChunk {
		count := min(fillChunk, n-from)
		q := fmt.Sprintf(`INSERT INTO %s.events_local (event_id, tenant, user_id, type, ts, received_at, properties, shard, seq)
SELECT concat('e', toString(g)), concat('t', toString(g %% 100)), concat('u', toString(g %% 10000)),
  concat('type', toString(g %% 5)), toDateTime(%d + intDiv(g, 4), 'UTC'), toDateTime(%d + intDiv(g, 4), 'UTC'),
  '{}', g %% %d, g
FROM (SELECT (number + %d) * %d + %d AS g FROM numbers(%d))`, database, first, first, shards, from, servers, i, count)
		if err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("insert rows %d-%d of %d: %w", from, from+count, n, err)
		}
	}
	return nil
}

// logPresenceReads logs, per server at servers (HTTP addresses), the
// sink's presence reads (sink.PresenceQuery) that system.query_log kept:
// how many, and the most rows and milliseconds one took. The sink logs
// them (log_queries), but a server SIGKILLed before its log's flush loses
// its latest entries, so this shows a sample, not a total. (type 2 is
// QueryFinish: 18.16 compares the column as a number.)
func logPresenceReads(t *testing.T, servers []string) {
	t.Helper()
	for i, srv := range servers {
		if _, err := chserver.Query(srv, "SYSTEM FLUSH LOGS"); err != nil {
			t.Logf("crashloop: server %d: flush logs: %v", i, err)
			continue
		}
		out, err := chserver.Query(srv, `SELECT count(), max(read_rows), max(query_duration_ms), quantileExact(0.5)(read_rows)
FROM system.query_log WHERE type = 2 AND query LIKE 'SELECT DISTINCT seq FROM %' FORMAT TabSeparated`)
		if err != nil {
			t.Logf("crashloop: server %d: presence reads: %v", i, err)
			continue
		}
		var n, maxRows, maxMS, medRows uint64
		if _, err := fmt.Sscan(out, &n, &maxRows, &maxMS, &medRows); err != nil {
			t.Logf("crashloop: server %d: presence reads: %q: %v", i, out, err)
			continue
		}
		t.Logf("crashloop: server %d: %d presence reads in system.query_log, rows read: median %d, most %d; slowest %d ms", i, n, medRows, maxRows, maxMS)
	}
}
