package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"golang.org/x/sync/errgroup"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/surgebin"
	"github.com/surge-events/surge/tools/stack"
)

// TestClusterUpCommand runs `surge up --cluster` as a user would: every
// server and two processes of each service run as separate processes. It
// checks its NATS nodes run from the surge binary itself, sends events to
// both ingest instances, checks each lands exactly once on
// both replicas of its ClickHouse shard, then stops the cluster with
// SIGTERM and checks that every process it started is gone.
func TestClusterUpCommand(t *testing.T) {
	const perIngest, perPost = 1500, 100

	bin := surgebin.Build(t)

	dir := t.TempDir()
	addrs := []string{freeAddr(t), freeAddr(t)}
	// Run from the source tree (this package's folder), where surge builds
	// the service binaries.
	up, lines := startSurgeUp(t, bin, "", true, "--cluster", "--dir", dir, "--http", strings.Join(addrs, ","))
	waitFor(t, lines, "Press Ctrl-C to stop.", 120*time.Second)

	info, err := stack.ReadInfo(dir)
	require.NoError(t, err)
	require.Equal(t, []string{"http://" + addrs[0], "http://" + addrs[1]}, info.IngestURLs)
	require.Len(t, info.ClickHouseReplicas, 2)
	require.Len(t, info.HTTP, 4)
	require.Len(t, info.Admin, 8)
	// 8 services, 4 ClickHouse servers, ZooKeeper, 3 NATS nodes.
	require.Len(t, info.PIDs, 16)
	// The NATS nodes run from the surge binary, which embeds nats-server:
	// a fresh clone needs none installed.
	realBin, err := filepath.EvalSymlinks(bin)
	require.NoError(t, err)
	for i := range 3 {
		name := fmt.Sprintf("nats-%d", i)
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", info.PIDs[name]))
		require.NoError(t, err, name)
		require.Equal(t, realBin, exe, name)
	}

	installAudit(t, info.HTTP, info.Database)

	for i, base := range info.IngestURLs {
		for p := range perIngest / perPost {
			var events []string
			for k := range perPost {
				events = append(events, fmt.Sprintf(`{"user_id":"u-%d-%d-%d","type":"click"}`, i, p, k))
			}
			resp, err := client.Post(base+"/v1/events", "application/json", strings.NewReader("["+strings.Join(events, ",")+"]"))
			require.NoError(t, err)
			answer, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusAccepted, resp.StatusCode, string(answer))
			require.JSONEq(t, fmt.Sprintf(`{"accepted":%d}`, perPost), string(answer))
		}
	}

	// info.HTTP lists the servers shard by shard: 0-0, 0-1, 1-0, 1-1.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var counts []string
		for _, addr := range info.HTTP {
			n, err := chserver.Query(addr, "SELECT count(), uniqExact(user_id) FROM surge.events_local FORMAT TSV")
			if !assert.NoError(c, err) {
				return
			}
			counts = append(counts, n)
		}
		for shard := range 2 {
			// Both replicas hold the same rows, each user once.
			assert.Equal(c, counts[2*shard], counts[2*shard+1], "shard %d replicas", shard)
		}
		var total, unique int
		for shard := range 2 {
			var n, u int
			_, err := fmt.Sscanf(counts[2*shard], "%d\t%d", &n, &u)
			if assert.NoError(c, err) {
				total += n
				unique += u
			}
		}
		assert.Equal(c, 2*perIngest, total)
		assert.Equal(c, 2*perIngest, unique)
	}, 60*time.Second, 250*time.Millisecond)

	concurrentDiscovery(t, info)
	// Exactly once, from the audit of every replica.
	inserted := requireEachInsertedOnce(t, info.HTTP, info.Database, 2*perIngest+discoveryEvents)
	discovery := 0
	for id := range inserted {
		if strings.HasPrefix(id, "cp-") {
			discovery++
		}
	}
	require.Equal(t, discoveryEvents, discovery)

	// `surge query` finds the cluster through stack.json and reads the
	// Distributed table over both shards.
	q := exec.CommandContext(t.Context(), bin, "query", "--dir", dir, "SELECT count() AS n FROM surge.events")
	out, err := q.CombinedOutput()
	require.NoError(t, err, string(out))
	require.Regexp(t, fmt.Sprintf(`\b%d\b`, 2*perIngest+discoveryEvents), string(out))

	stopSurgeUp(t, up, lines, syscall.SIGTERM)
	// surge waited for each child, so none lingers even as a zombie.
	for name, pid := range info.PIDs {
		assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "%s (pid %d) still runs", name, pid)
	}
	_, err = os.Stat(filepath.Join(dir, stack.InfoFile))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// discoveryEvents is how many events concurrentDiscovery sends.
const discoveryEvents = 16_000

// concurrentDiscovery is the typed columns design's case 12: every shard
// at once, through both ingest instances, two batchers and two sinks, sees
// a property key nobody sent before. The schema changes once (one new
// revision holds p_coupon), each server runs at most one ALTER per table
// naming it per sink process, and every event lands once, with the value
// in p_coupon or, for a batch built before the column was agreed, its path
// in _unpromoted (at most one batch a shard).
func concurrentDiscovery(t *testing.T, info stack.Info) {
	nc, err := nats.Connect(info.NATSURL, nats.UserInfo(info.NATSUser, info.NATSPassword))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	reg, err := schema.OpenRegistry(t.Context(), js, "events", 3, 10*time.Second)
	require.NoError(t, err)
	before := reg.Current().Rev

	const perRequest = 1000
	g, ctx := errgroup.WithContext(t.Context())
	for r := range discoveryEvents / perRequest {
		base := info.IngestURLs[r%len(info.IngestURLs)]
		g.Go(func() error {
			events := make([]string, perRequest)
			for k := range events {
				events[k] = fmt.Sprintf(`{"event_id":"cp-%d-%d","user_id":"c-%d-%d","type":"redeem","properties":{"coupon":"C1"}}`, r, k, r, k)
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/events", strings.NewReader("["+strings.Join(events, ",")+"]"))
			if err != nil {
				return err
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				body, _ := io.ReadAll(resp.Body)
				return fmt.Errorf("status %d: %s", resp.StatusCode, body)
			}
			return nil
		})
	}
	require.NoError(t, g.Wait())

	// info.HTTP lists the servers shard by shard: 0-0, 0-1, 1-0, 1-1.
	var filled, unpromoted int
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		filled, unpromoted = 0, 0
		for shard := range 2 {
			ans, err := chserver.Query(info.HTTP[2*shard], `SELECT count(), uniqExact(event_id), countIf(p_coupon = 'C1'),
				countIf(has(_unpromoted, '/coupon'))
				FROM surge.events_local WHERE startsWith(event_id, 'cp-') FORMAT TSV`)
			if !assert.NoError(c, err) {
				return
			}
			var n, u, f, un int
			_, err = fmt.Sscanf(ans, "%d\t%d\t%d\t%d", &n, &u, &f, &un)
			if !assert.NoError(c, err, ans) {
				return
			}
			assert.Equal(c, n, u, "shard %d: an event stored twice", shard)
			filled, unpromoted = filled+f, unpromoted+un
		}
		assert.Equal(c, discoveryEvents, filled+unpromoted, "events with the coupon in p_coupon or _unpromoted")
	}, 60*time.Second, 250*time.Millisecond)
	t.Logf("coupon: %d events in p_coupon, %d with /coupon unpromoted", filled, unpromoted)
	// Left out only before the column was agreed: in each logical shard,
	// no event with the path unpromoted comes after one with the column.
	for shard := range 2 {
		late, err := chserver.Query(info.HTTP[2*shard], `SELECT count() FROM (SELECT shard,
			maxIf(seq, has(_unpromoted, '/coupon')) AS u, minIf(seq, p_coupon = 'C1') AS f
			FROM surge.events_local WHERE startsWith(event_id, 'cp-') GROUP BY shard) WHERE u > 0 AND f > 0 AND u > f FORMAT TSV`)
		require.NoError(t, err)
		require.Equal(t, "0", late, "ClickHouse shard %d: logical shards with the coupon unpromoted after it had a column", shard)
	}

	after, err := reg.Read(t.Context())
	require.NoError(t, err)
	require.Equal(t, before+1, after.Rev, "schema revisions for one new key")
	require.Equal(t, "/coupon", after.Doc.Columns["p_coupon"].Path)
	for i, addr := range info.HTTP {
		resp, err := client.Post("http://"+addr+"/", "text/plain", strings.NewReader("SYSTEM FLUSH LOGS"))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, "SYSTEM FLUSH LOGS on server %d", i)
		for _, table := range []string{"events_local", "events"} {
			n, err := chserver.Query(addr, fmt.Sprintf(`SELECT count() FROM system.query_log WHERE type = 1
				AND query LIKE 'ALTER TABLE surge.%s ADD COLUMN%%p_coupon%%'`, table))
			if err != nil && strings.Contains(err.Error(), "Code: 60") && strings.Contains(err.Error(), "system.query_log") {
				// 18.16 makes system.query_log at its first logged
				// query: a replica that got every column through
				// ZooKeeper and was never asked a logged query has none.
				n, err = "0", nil
			}
			require.NoError(t, err)
			var alters int
			_, err = fmt.Sscanf(n, "%d", &alters)
			require.NoError(t, err)
			// One per sink process at most; a replica usually gets the
			// column through ZooKeeper, with no ALTER of its own.
			assert.LessOrEqual(t, alters, 2, "server %d: ALTERs of %s naming p_coupon", i, table)
		}
	}
}
