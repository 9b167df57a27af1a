// Package e2e drives the whole pipeline over HTTP and checks what lands
// in ClickHouse, against real NATS JetStream and clickhouse-server.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/tools/stack"
)

const shards = 8

type sent struct {
	UserID     string
	Type       string
	TS         time.Time
	Properties string
}

func startStack(t *testing.T) *stack.Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{
		Dir: t.TempDir(), Shards: shards, ClickHouseServers: 2, NATSPort: -1,
		Policy: batch.Policy{MaxRows: 5000, MaxBytes: 8 << 20, MaxAge: 300 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Stop()) })
	return st
}

func openServers(t *testing.T, st *stack.Stack) []driver.Conn {
	t.Helper()
	var conns []driver.Conn
	for _, addr := range st.ClickHouse.Addrs() {
		c, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// count runs a SELECT count() query. It returns the error rather than fail
// the test, so that conditions polled off the test goroutine can use it.
func count(ctx context.Context, c driver.Conn, query string) (uint64, error) {
	var n uint64
	if err := c.QueryRow(ctx, query).Scan(&n); err != nil {
		return 0, fmt.Errorf("%s: %w", query, err)
	}
	return n, nil
}

// requireCount waits until query counts want rows, and fails when it
// counts more or never gets there.
func requireCount(t *testing.T, c driver.Conn, query string, want uint64, timeout time.Duration) {
	t.Helper()
	require.EventuallyWithT(t, func(collect *assert.CollectT) {
		n, err := count(t.Context(), c, query)
		if assert.NoError(collect, err) {
			assert.GreaterOrEqual(collect, n, want, query)
		}
	}, timeout, 50*time.Millisecond)
	n, err := count(t.Context(), c, query)
	require.NoError(t, err)
	require.Equal(t, want, n, query)
}

// client is the tests' HTTP client: no request waits without bound.
var client = &http.Client{Timeout: 30 * time.Second}

// postEvents posts one JSON array of want events to ingest and checks that
// all of them are accepted.
func postEvents(ctx context.Context, url string, body []byte, want int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var ans struct {
		Accepted int `json:"accepted"`
	}
	err = json.NewDecoder(resp.Body).Decode(&ans)
	if err != nil || resp.StatusCode != http.StatusAccepted || ans.Accepted != want {
		return fmt.Errorf("status %d accepted %d of %d: %v", resp.StatusCode, ans.Accepted, want, err)
	}
	return nil
}

// TestHundredThousandEvents sends 100,000 events from several concurrent
// clients and checks that every one is in ClickHouse exactly once, on the
// shard its key hashes to and the server owning that shard, intact.
func TestHundredThousandEvents(t *testing.T) {
	st := startStack(t)
	conns := openServers(t, st)
	servers := chHTTP(st)
	installAudit(t, servers, st.Database)

	const (
		total      = 100_000
		perRequest = 500
		clients    = 8
	)
	base := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	want := make(map[string]sent, total)
	bodies := make([][]byte, 0, total/perRequest)
	for r := 0; r < total/perRequest; r++ {
		var evs []map[string]any
		for i := 0; i < perRequest; i++ {
			n := r*perRequest + i
			id := fmt.Sprintf("e2e-%06d", n)
			ev := map[string]any{
				"event_id":   id,
				"type":       []string{"page_view", "click", "signup"}[n%3],
				"ts":         base.Add(time.Duration(n) * time.Second).Format(time.RFC3339),
				"properties": map[string]any{"n": n, "path": "/p/" + strconv.Itoa(n%97)},
			}
			var user string
			if n%2 == 0 {
				ev["user_id"] = n % 7919 // integers are accepted and stored as their decimal text
				user = strconv.Itoa(n % 7919)
			} else {
				user = fmt.Sprintf("user-%d", n%7919)
				ev["user_id"] = user
			}
			evs = append(evs, ev)
			want[id] = sent{UserID: user, Type: ev["type"].(string), TS: base.Add(time.Duration(n) * time.Second),
				Properties: fmt.Sprintf(`{"n":%d,"path":"/p/%d"}`, n, n%97)}
		}
		body, err := json.Marshal(evs)
		require.NoError(t, err)
		bodies = append(bodies, body)
	}

	// clients requests at a time; the first error cancels the rest.
	g, ctx := errgroup.WithContext(t.Context())
	g.SetLimit(clients)
	for _, body := range bodies {
		g.Go(func() error { return postEvents(ctx, st.IngestURL+"/v1/events", body, perRequest) })
	}
	require.NoError(t, g.Wait())

	requireCount(t, conns[0], fmt.Sprintf("SELECT count() FROM %s.events", st.Database), total, 2*time.Minute)

	seen := make(map[string]bool, total)
	for server, c := range conns {
		rows, err := c.Query(t.Context(), fmt.Sprintf(
			"SELECT event_id, tenant, user_id, type, ts, properties, shard FROM %s.events_local", st.Database))
		require.NoError(t, err)
		for rows.Next() {
			var (
				id, tenant, user, typ, props string
				ts                           time.Time
				sh                           uint16
			)
			require.NoError(t, rows.Scan(&id, &tenant, &user, &typ, &ts, &props, &sh))
			require.False(t, seen[id], "event %s stored twice", id)
			seen[id] = true
			w, ok := want[id]
			require.True(t, ok, "unexpected event %s", id)
			require.Equal(t, "default", tenant)
			require.Equal(t, w.UserID, user, id)
			require.Equal(t, w.Type, typ, id)
			require.True(t, w.TS.Equal(ts), "%s: ts %s, want %s", id, ts, w.TS)
			require.Equal(t, w.Properties, props, id)
			require.Equal(t, shard.Of("default", w.UserID, shards), int(sh), "%s on wrong shard", id)
			require.Equal(t, int(sh)%len(conns), server, "%s (shard %d) on wrong server", id, sh)
		}
		require.NoError(t, rows.Err())
		rows.Close()
	}
	require.Len(t, seen, total)
	requireInsertedOnce(t, servers, st.Database, "", want)
}
