// Package typed checks, end to end against real NATS JetStream and
// clickhouse-server, how event properties land as typed columns: the
// acceptance cases of the typed columns design, with exact inputs and the
// exact table state after.
package typed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	dto "github.com/prometheus/client_model/go"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/tools/stack"
)

// apiKey is the key of tenant t1, the tenant of every case.
const apiKey = "key-t1"

// harness is a running stack and connections to each of its ClickHouse
// servers.
type harness struct {
	t     *testing.T
	st    *stack.Stack
	conns []driver.Conn
	db    string
}

// start runs a stack of shards shards with cfg as the schema section, and
// batches cut after a few milliseconds, so each request is its own batch.
func start(t *testing.T, shards int, cfg schema.Config) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{
		Dir: t.TempDir(), Shards: shards, ClickHouseServers: 2, NATSPort: -1,
		Policy:  batch.Policy{MaxRows: 5000, MaxBytes: 8 << 20, MaxAge: 20 * time.Millisecond},
		APIKeys: map[string]string{apiKey: "t1"},
		Schema:  &cfg,
	})
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Stop(); err != nil {
			t.Errorf("stop stack: %v", err)
		}
	})
	h := &harness{t: t, st: st, db: st.Database}
	for _, addr := range st.ClickHouse.Addrs() {
		c, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}})
		if err != nil {
			t.Fatalf("open clickhouse %s: %v", addr, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		h.conns = append(h.conns, c)
	}
	return h
}

var client = &http.Client{Timeout: 30 * time.Second}

// on is h reporting to t: a subtest's failures end the subtest.
func (h *harness) on(t *testing.T) *harness {
	c := *h
	c.t = t
	return &c
}

// send posts events (JSON objects, each with its event_id) in one request
// and waits until every one of them is queryable through events.
func (h *harness) send(events ...string) {
	h.t.Helper()
	body := "[" + strings.Join(events, ",") + "]"
	req, err := http.NewRequestWithContext(h.t.Context(), http.MethodPost, h.st.IngestURL+"/v1/events", strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := client.Do(req)
	if err != nil {
		h.t.Fatalf("post: %v", err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		h.t.Fatalf("post: status %d: %s", resp.StatusCode, answer)
	}
	ids := make([]string, len(events))
	for i, e := range events {
		var ev struct {
			EventID string `json:"event_id"`
		}
		if err := json.Unmarshal([]byte(e), &ev); err != nil || ev.EventID == "" {
			h.t.Fatalf("event %d has no event_id: %s", i, e)
		}
		ids[i] = ev.EventID
	}
	h.waitRows(ids)
}

// waitRows waits until events holds one row of each of ids; it fails when
// a row is stored twice or rows are missing after a minute.
func (h *harness) waitRows(ids []string) {
	h.t.Helper()
	quoted := make([]string, len(ids))
	for i, id := range ids {
		quoted[i] = "'" + strings.ReplaceAll(id, "'", `\'`) + "'"
	}
	q := fmt.Sprintf("SELECT count(), uniqExact(event_id) FROM %s.events WHERE event_id IN (%s)", h.db, strings.Join(quoted, ","))
	deadline := time.Now().Add(time.Minute)
	for {
		var n, uniq uint64
		if err := h.conns[0].QueryRow(h.t.Context(), q).Scan(&n, &uniq); err != nil {
			h.t.Fatalf("count rows: %v", err)
		}
		if n > uniq {
			h.t.Fatalf("%d rows for %d events: stored twice", n, uniq)
		}
		if n == uint64(len(ids)) {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d of %d events landed after a minute", n, len(ids))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// columns are the property columns of table on server i, "name type" each,
// in name order.
func (h *harness) columns(i int, table string) []string {
	h.t.Helper()
	rows, err := h.conns[i].Query(h.t.Context(), `SELECT name, type FROM system.columns
		WHERE database = ? AND table = ? AND (startsWith(name, 'p_') OR startsWith(name, 'context_')) ORDER BY name`, h.db, table)
	if err != nil {
		h.t.Fatalf("columns: %v", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, name+" "+typ)
	}
	return out
}

// requireColumns checks that every server's events_local and events have
// the property columns want (and no other), polling a while for the
// Distributed tables, which are altered after the local ones.
func (h *harness) requireColumns(want ...string) {
	h.t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var bad []string
		for i := range h.conns {
			for _, table := range []string{"events_local", "events"} {
				if got := h.columns(i, table); !slices.Equal(got, want) {
					bad = append(bad, fmt.Sprintf("server %d %s: %q", i, table, got))
				}
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("property columns, want %q:\n%s", want, strings.Join(bad, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// row reads columns of the event id through events, each as its text
// (toString), NULL as "NULL".
func (h *harness) row(id string, columns ...string) map[string]string {
	h.t.Helper()
	exprs := make([]string, len(columns))
	for i, c := range columns {
		exprs[i] = fmt.Sprintf("ifNull(toString(%s), 'NULL')", c)
	}
	q := fmt.Sprintf("SELECT %s FROM %s.events WHERE event_id = ?", strings.Join(exprs, ", "), h.db)
	vals := make([]string, len(columns))
	dest := make([]any, len(columns))
	for i := range vals {
		dest[i] = &vals[i]
	}
	if err := h.conns[0].QueryRow(h.t.Context(), q, id).Scan(dest...); err != nil {
		h.t.Fatalf("row %s: %s: %v", id, q, err)
	}
	out := make(map[string]string, len(columns))
	for i, c := range columns {
		out[c] = vals[i]
	}
	return out
}

// requireRow checks the given columns of event id.
func (h *harness) requireRow(id string, want map[string]string) {
	h.t.Helper()
	cols := make([]string, 0, len(want))
	for c := range want {
		cols = append(cols, c)
	}
	slices.Sort(cols)
	got := h.row(id, cols...)
	for _, c := range cols {
		if got[c] != want[c] {
			h.t.Errorf("event %s: %s = %q, want %q", id, c, got[c], want[c])
		}
	}
}

// metric is the value of the batcher's counter name with the label
// reason (0 when it has no such series).
func (h *harness) metric(part, name string, labels map[string]string) float64 {
	h.t.Helper()
	families, err := h.st.Part(part).Registry.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				if !hasLabel(m.GetLabel(), k, v) {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func hasLabel(labels []*dto.LabelPair, k, v string) bool {
	for _, l := range labels {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

// queryLog counts the statements in system.query_log of every server that
// match like (after flushing the log).
func (h *harness) queryLog(like string) uint64 {
	h.t.Helper()
	var total uint64
	for _, c := range h.conns {
		if err := c.Exec(h.t.Context(), "SYSTEM FLUSH LOGS"); err != nil {
			h.t.Fatal(err)
		}
		var n uint64
		if err := c.QueryRow(h.t.Context(), "SELECT count() FROM system.query_log WHERE type = 1 AND query LIKE ?", like).Scan(&n); err != nil {
			h.t.Fatal(err)
		}
		total += n
	}
	return total
}

// compact is s with JSON whitespace removed, as ingest stores properties.
func compact(s string) string {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		panic(err)
	}
	return b.String()
}
