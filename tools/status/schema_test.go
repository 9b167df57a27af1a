package status

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// TestCollectSchema reads the typed columns of two tables from a real
// schema bucket against two real ClickHouse servers (replicas of one
// entry) and three batchers' metrics: the lowest column limit, the summed
// conflicts and rows (a batcher without a conflict yet counts its rows), the failed column, and per column the replicas
// lacking it, for the table landing in events_local only. A column
// pending for longer than a minute is a warning; the one agreed just now
// and the failed one's missing DDL are not pending warnings.
func TestCollectSchema(t *testing.T) {
	ctx := t.Context()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	ch, err := chserver.StartCluster(ctx, t.TempDir(), 2)
	require.NoError(t, err)
	t.Cleanup(ch.Stop)
	base := make([]string, len(batch.BaseColumns))
	for i, c := range batch.BaseColumns {
		base[i] = c.Name + " " + c.Type
	}
	for i, srv := range ch.Servers {
		ddl := []string{
			"CREATE DATABASE surge",
			"CREATE TABLE surge.events_local (" + strings.Join(base, ", ") + ", p_a Nullable(String)) ENGINE = MergeTree() ORDER BY event_id",
		}
		if i == 0 {
			ddl = append(ddl, "ALTER TABLE surge.events_local ADD COLUMN p_b Nullable(Int64)")
		}
		for _, sql := range ddl {
			resp, err := http.Post("http://"+srv.HTTPAddr()+"/", "text/plain", strings.NewReader(sql))
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", sql, body)
		}
	}
	s0, s1 := ch.Servers[0].Addr(), ch.Servers[1].Addr()
	both := []string{s0, s1}
	slices.Sort(both)

	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	now := time.Now().UTC()
	write := func(table string, doc *schema.Doc) {
		t.Helper()
		reg, err := schema.OpenRegistry(ctx, js, table, 1, 5*time.Second)
		require.NoError(t, err)
		_, err = reg.Update(ctx, func(*schema.Doc) (*schema.Doc, bool) { return doc, true })
		require.NoError(t, err)
	}
	col := func(path string, ago time.Duration) *schema.Col {
		return &schema.Col{Path: path, Type: "string", Origin: schema.Inferred, Added: now.Add(-ago)}
	}
	write("events", &schema.Doc{
		Columns: map[string]*schema.Col{
			"p_a": col("/a", 10*time.Minute), // everywhere
			"p_b": col("/b", 5*time.Minute),  // server 1 lacks it
			"p_c": col("/c", 0),              // agreed just now, nowhere yet
			"p_f": col("/f", time.Hour),      // its DDL failed for good
		},
		Failed: map[string]string{"p_f": "code: 44"},
	})
	write("clicks", &schema.Doc{Columns: map[string]*schema.Col{"p_x": col("/x", time.Hour)}})

	batcher := func(limit, typeConflicts, collisions float64, shard string, rows float64) string {
		return admin(t, func(reg *prometheus.Registry, _ *service.Admin) {
			f := promauto.With(reg)
			f.NewGaugeVec(prometheus.GaugeOpts{Name: "surge_schema_column_limit"}, []string{"table"}).WithLabelValues("events").Set(limit)
			conflicts := f.NewCounterVec(prometheus.CounterOpts{Name: "surge_schema_conflicts_total"}, []string{"table", "reason"})
			// A reason shows once it counted.
			if typeConflicts > 0 {
				conflicts.WithLabelValues("events", "type").Add(typeConflicts)
			}
			if collisions > 0 {
				conflicts.WithLabelValues("events", "collision").Add(collisions)
			}
			f.NewCounterVec(prometheus.CounterOpts{Name: "surge_batcher_rows_total"}, []string{"shard"}).WithLabelValues(shard).Add(rows)
		})
	}
	c, err := New(Config{NATSURL: ns.ClientURL(), ClickHouse: []string{s0 + "|" + s1}, Shards: 1, Admin: []Endpoint{
		{Name: "batcher-a", Service: "batcher", Addr: batcher(150, 4, 2, "0", 100)},
		{Name: "batcher-b", Service: "batcher", Addr: batcher(120, 3, 0, "1", 50)},
		{Name: "batcher-c", Service: "batcher", Addr: batcher(130, 0, 0, "2", 30)}, // no conflict yet
	}})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, c.Close()) })
	r, err := c.Collect(ctx)
	require.NoError(t, err)
	r.Judge(DefaultThresholds())

	u64 := func(v uint64) *uint64 { return &v }
	assert.Equal(t, []TableSchema{
		{Table: "clicks", Revision: 2, Columns: 1, Limit: 200, LimitFrom: "default"},
		{Table: "events", Revision: 1, Columns: 4, Limit: 120, LimitFrom: "batchers", Failed: []string{"p_f"}, Checked: true,
			Pending: []PendingColumn{
				{Name: "p_b", Path: "/b", Added: now.Add(-5 * time.Minute), Missing: []string{s1}},
				{Name: "p_c", Path: "/c", Added: now, Missing: both},
			},
			Conflicts: u64(9), Rows: u64(180)},
	}, r.Schemas)
	assert.Empty(t, r.SchemaUnreadable)
	assert.Equal(t, []Problem{
		{Kind: KindPendingDDL, Subject: "table events", Shard: -1,
			Detail: "1 column agreed 1m ago or more (the oldest " + Age(r.Time.Sub(now.Add(-5*time.Minute))) + ") and still missing: p_b on " + s1 + "; `surge schema ls` shows each server"},
		{Kind: KindDDLFailed, Subject: "table events", Shard: -1,
			Detail: "1 column whose DDL failed for good, no longer filled (the values stay in properties): p_f"},
	}, r.Warnings)
	for _, p := range r.Problems {
		assert.NotContains(t, p.Subject, "table", "schema findings are warnings only")
	}
}
