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
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/stretchr/testify/require"

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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
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

func count(t *testing.T, c driver.Conn, query string) uint64 {
	t.Helper()
	var n uint64
	require.NoError(t, c.QueryRow(context.Background(), query).Scan(&n))
	return n
}

// TestHundredThousandEvents sends 100,000 events from several concurrent
// clients and checks that every one is in ClickHouse exactly once, on the
// shard its key hashes to and the server owning that shard, intact.
func TestHundredThousandEvents(t *testing.T) {
	st := startStack(t)
	conns := openServers(t, st)

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

	work := make(chan []byte)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range work {
				resp, err := http.Post(st.IngestURL+"/v1/events", "application/json", bytes.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				var ans struct {
					Accepted int `json:"accepted"`
				}
				err = json.NewDecoder(resp.Body).Decode(&ans)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusAccepted || ans.Accepted != perRequest {
					errs <- fmt.Errorf("status %d accepted %d: %v", resp.StatusCode, ans.Accepted, err)
					return
				}
			}
		}()
	}
	for _, b := range bodies {
		work <- b
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	q := fmt.Sprintf("SELECT count() FROM %s.events", st.Database)
	require.Eventually(t, func() bool { return count(t, conns[0], q) >= total }, 2*time.Minute, 100*time.Millisecond)
	require.Equal(t, uint64(total), count(t, conns[0], q), "Distributed table count")

	seen := make(map[string]bool, total)
	for server, c := range conns {
		rows, err := c.Query(context.Background(), fmt.Sprintf(
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
}
