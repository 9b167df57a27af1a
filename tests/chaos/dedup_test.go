package chaos

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chaudit"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/ports"
)

// dedupPipeline is the pipeline of TestDedupEventIDs: two ingest
// instances, one partitioner, batcher and sink, as OS processes.
type dedupPipeline struct {
	*pipeline
	ingestURLs     []string // the Segment batch endpoint of each ingest
	batcherMetrics string
}

// startDedupPipeline starts nats-server, two clickhouse-servers and the
// services, with API keys for tenants acme and beta, and a JetStream
// duplicate window of 1s (set by the ingests, which start last and so
// configure the streams last; the partitioner's own check needs its
// default), so a resend after it is no JetStream duplicate.
func startDedupPipeline(t *testing.T) *dedupPipeline {
	t.Helper()
	return startTwoIngests(t, []string{"SURGE_INGEST_API_KEYS=key-acme=acme,key-beta=beta", "SURGE_STREAMS_DUPLICATE_WINDOW=1s"}, nil)
}

// startTwoIngests starts nats-server, two clickhouse-servers, the sink,
// batcher and partitioner and two ingests, each ready before the next;
// ingestEnv is added to both ingests' settings, partitionerEnv to the
// partitioner's.
func startTwoIngests(t *testing.T, ingestEnv, partitionerEnv []string) *dedupPipeline {
	t.Helper()
	dir := t.TempDir()
	bins := build(t, filepath.Join(dir, "bin"))
	logs := filepath.Join(dir, "logs")
	require.NoError(t, os.MkdirAll(logs, 0o755))
	free, err := ports.Free(9)
	require.NoError(t, err)
	natsPort, monPort := free[0], free[1]
	p := &dedupPipeline{pipeline: startServers(t, dir, bins, logs, natsPort, monPort)}

	shardsVar := "SURGE_SHARDS=" + strconv.Itoa(shards)
	admin := map[string]int{"sink": free[2], "batcher": free[3], "partitioner": free[4], "ingest": free[5], "ingest-b": free[6]}
	extra := map[string][]string{
		"sink":        {shardsVar, "SURGE_CLICKHOUSE_ADDRS=" + strings.Join(p.clickhouse.Addrs(), ",")},
		"batcher":     {shardsVar, "SURGE_BATCH_MAX_ROWS=5000", "SURGE_BATCH_MAX_AGE=300ms"},
		"partitioner": append([]string{shardsVar}, partitionerEnv...),
		"ingest":      append([]string{"SURGE_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(free[7])}, ingestEnv...),
		"ingest-b":    append([]string{"SURGE_HTTP_ADDR=127.0.0.1:" + strconv.Itoa(free[8])}, ingestEnv...),
	}
	p.ingestURLs = []string{fmt.Sprintf("http://127.0.0.1:%d/v1/batch", free[7]), fmt.Sprintf("http://127.0.0.1:%d/v1/batch", free[8])}
	p.batcherMetrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", admin["batcher"])
	for _, name := range []string{"sink", "batcher", "partitioner", "ingest", "ingest-b"} {
		bin := strings.TrimSuffix(name, "-b")
		env := []string{"SURGE_NATS_URL=" + p.natsURL, "SURGE_LOG_LEVEL=info", "SURGE_LOG_FORMAT=json",
			"SURGE_ADMIN_ADDR=127.0.0.1:" + strconv.Itoa(admin[name])}
		env = append(env, extra[name]...)
		requireKnownEnv(t, bin, env)
		sp := &proc{name: name, bin: bins[bin], env: env, logPath: filepath.Join(logs, name+".log"),
			ready: fmt.Sprintf("http://127.0.0.1:%d/readyz", admin[name])}
		p.services[name] = sp
		require.NoError(t, sp.start())
		t.Cleanup(func() { sp.stop(syscall.SIGKILL) })
		// In order: each ingest configures the streams after the others.
		require.NoError(t, sp.waitReady(t.Context(), time.Minute))
	}
	return p
}

// segmentTrack is a Segment track call with messageId id, of user id%500.
func segmentTrack(id string, n int) string {
	return fmt.Sprintf(`{"type":"track","messageId":%q,"userId":"user-%d","event":"Clicked","properties":{"n":%d},"timestamp":"2026-12-01T10:00:00Z"}`, id, n%500, n)
}

// sendSegment posts the tracks of ids, per chunk of size, to url as key.
func sendSegment(ctx context.Context, url, key string, ids []int, prefix string, size int) error {
	for chunk := range slices.Chunk(ids, size) {
		var b strings.Builder
		b.WriteString(`{"batch":[`)
		for i, n := range chunk {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(segmentTrack(prefix+strconv.Itoa(n), n))
		}
		b.WriteString(`]}`)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader([]byte(b.String())))
		if err != nil {
			return err
		}
		req.SetBasicAuth(key, "")
		req.Header.Set("Content-Type", "application/json")
		resp, err := httpc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("POST %s: status %d", url, resp.StatusCode)
		}
	}
	return nil
}

// rowsOf counts the rows of tenant whose event_id starts with prefix, and
// their distinct ids, on every server, without FINAL.
func rowsOf(servers []string, tenant, prefix string) (total, uniq uint64, err error) {
	for _, srv := range servers {
		out, err := chserver.Query(srv, fmt.Sprintf("SELECT count(), uniqExact(event_id) FROM surge.events_local WHERE tenant = '%s' AND startsWith(event_id, '%s')", tenant, prefix))
		if err != nil {
			return 0, 0, err
		}
		var c, u uint64
		if _, err := fmt.Sscan(out, &c, &u); err != nil {
			return 0, 0, err
		}
		total += c
		uniq += u
	}
	return total, uniq, nil
}

// waitIdle waits until the pipeline is idle: INGEST and BATCHES empty and
// the rows in ClickHouse unchanged over 2 s (several batch ages: a batch
// still open in the batcher would be cut and land within it), with at
// least want distinct ids of the prefix.
func (p *dedupPipeline) waitIdle(t *testing.T, tenant, prefix string, want uint64) {
	t.Helper()
	var last uint64
	var since time.Time
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		total, uniq, err := rowsOf(p.chHTTP(), tenant, prefix)
		if !assert.NoError(c, err) {
			return
		}
		assert.GreaterOrEqual(c, uniq, want)
		assert.Zero(c, p.streamMsgs(streams.Ingest))
		assert.Zero(c, p.streamMsgs(streams.Batches))
		if total != last || since.IsZero() {
			last, since = total, time.Now()
		}
		assert.GreaterOrEqual(c, time.Since(since), 2*time.Second, "rows still changing")
	}, 3*time.Minute, 200*time.Millisecond)
}

// restartBatcher SIGKILLs the batcher and starts it again.
func (p *dedupPipeline) restartBatcher(t *testing.T) {
	t.Helper()
	b := p.services["batcher"]
	b.stop(syscall.SIGKILL)
	require.NoError(t, b.start())
	require.NoError(t, b.waitReady(t.Context(), time.Minute))
}

// TestDedupEventIDs sends 10,000 Segment events with messageIds, then
// resends them reordered through the other ingest, in superset batches,
// after the JetStream duplicate window and after a SIGKILL of the batcher:
// ClickHouse holds each once, without FINAL. The same messageIds in
// another tenant are kept. Wiping DEDUP mid-run loses nothing.
func TestDedupEventIDs(t *testing.T) {
	if testing.Short() {
		t.Skip("process test skipped in -short mode")
	}
	if _, err := os.Stat(chserver.Binary); err != nil {
		t.Fatalf("clickhouse-server not installed (%v); run `go run ./tools/cmd/surge setup`", err)
	}
	p := startDedupPipeline(t)
	installAudit(t, p.chHTTP())
	ctx := t.Context()
	const n = 10_000
	ids := make([]int, n)
	for i := range ids {
		ids[i] = i
	}
	a, b := p.ingestURLs[0], p.ingestURLs[1]
	rng := rand.New(rand.NewPCG(20, 1))

	require.NoError(t, sendSegment(ctx, a, "key-acme", ids, "m-", 100))
	firstSent := time.Now()
	p.waitIdle(t, "acme", "m-", n)

	shuffled := slices.Clone(ids)
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	require.NoError(t, sendSegment(ctx, b, "key-acme", shuffled, "m-", 100), "reordered, through the other ingest")
	require.NoError(t, sendSegment(ctx, a, "key-acme", ids, "m-", 500), "superset batches")
	// The same requests as the first: identical Nats-Msg-Ids, which
	// JetStream no longer remembers once its 1s window has passed (a
	// wait for a clock window, not for an event).
	time.Sleep(time.Until(firstSent.Add(1500 * time.Millisecond)))
	require.NoError(t, sendSegment(ctx, a, "key-acme", ids, "m-", 100), "after the JetStream window")
	require.NoError(t, sendSegment(ctx, b, "key-beta", ids[:100], "m-", 100), "the same ids in another tenant")
	p.waitIdle(t, "acme", "m-", n)

	p.restartBatcher(t)
	require.NoError(t, sendSegment(ctx, b, "key-acme", shuffled, "m-", 250), "after a SIGKILL of the batcher")
	p.waitIdle(t, "acme", "m-", n)
	total, uniq, err := rowsOf(p.chHTTP(), "acme", "m-")
	require.NoError(t, err)
	require.Equal(t, uint64(n), uniq, "every event stored")
	require.Equal(t, uint64(n), total, "each once, without FINAL")
	// The audit of inserts, which no merge of the ReplacingMergeTree folds:
	// each inserted once.
	want := map[string]struct{}{}
	for _, i := range ids {
		want["m-"+strconv.Itoa(i)] = struct{}{}
	}
	require.NoError(t, chaudit.Compare(audited(t, p, "acme", "m-"), want).Err())
	total, _, err = rowsOf(p.chHTTP(), "beta", "m-")
	require.NoError(t, err)
	require.Equal(t, uint64(100), total, "the same ids of another tenant are other events")
	wantBeta := map[string]struct{}{}
	for _, i := range ids[:100] {
		wantBeta["m-"+strconv.Itoa(i)] = struct{}{}
	}
	require.NoError(t, chaudit.Compare(audited(t, p, "beta", "m-"), wantBeta).Err())
	require.Greater(t, dropped(t, p.batcherMetrics), 0.0)

	// Wiping DEDUP mid-run: the first half of new events is sent and
	// stored, DEDUP is purged, the batcher killed (its set is rebuilt from
	// nothing), the second half sent, then everything resent. Nothing is
	// lost; only copies of the first half may be stored again.
	const w = 2_000
	wids := ids[:w]
	require.NoError(t, sendSegment(ctx, a, "key-acme", wids[:w/2], "w-", 100))
	p.waitIdle(t, "acme", "w-", w/2)
	nc, err := nats.Connect(p.natsURL)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	st, err := js.Stream(ctx, streams.Dedup)
	require.NoError(t, err)
	require.NoError(t, st.Purge(ctx))
	p.restartBatcher(t)
	require.NoError(t, sendSegment(ctx, b, "key-acme", wids[w/2:], "w-", 100))
	require.NoError(t, sendSegment(ctx, a, "key-acme", wids, "w-", 200))
	p.waitIdle(t, "acme", "w-", w)
	_, uniq, err = rowsOf(p.chHTTP(), "acme", "w-")
	require.NoError(t, err)
	require.Equal(t, uint64(w), uniq, "nothing lost")
	copies := 0
	for id, times := range audited(t, p, "acme", "w-") {
		n, err := strconv.Atoi(strings.TrimPrefix(id, "w-"))
		require.NoError(t, err)
		if times > 1 {
			require.Less(t, n, w/2, "only ids sent before the wipe may be stored again: %s x%d", id, times)
			require.Equal(t, 2, times, "once more at most: %s", id)
			copies++
		}
	}
	t.Logf("dedup: after the wipe %d copies of %d forgotten ids were stored again", copies, w/2)
}

// audited is how many times each event id of tenant starting with prefix
// was inserted, from the audit.
func audited(t *testing.T, p *dedupPipeline, tenant, prefix string) map[string]int {
	t.Helper()
	inserted, err := chaudit.Inserted(p.chHTTP(), "surge", tenant)
	require.NoError(t, err)
	for id := range inserted {
		if !strings.HasPrefix(id, prefix) {
			delete(inserted, id)
		}
	}
	return inserted
}

// dropped sums surge_batcher_duplicates_dropped_total from the batcher's
// metrics (since its last start).
func dropped(t *testing.T, url string) float64 {
	t.Helper()
	resp, err := httpc.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	require.NoError(t, err)
	var sum float64
	for line := range strings.Lines(buf.String()) {
		if rest, ok := strings.CutPrefix(line, "surge_batcher_duplicates_dropped_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(t, err)
			sum += f
		}
	}
	return sum
}
