package schemaview_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
	"github.com/surge-events/surge/tools/schemaview"
)

var httpClient = &http.Client{Timeout: 30 * time.Second}

// exec runs statements on a server over HTTP.
func exec(t *testing.T, srv *chserver.Server, statements ...string) {
	t.Helper()
	for _, sql := range statements {
		resp, err := httpClient.Post("http://"+srv.HTTPAddr()+"/", "text/plain", strings.NewReader(sql))
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", sql, body)
	}
}

// baseDDL is the base columns as the sink declares them.
func baseDDL() string {
	parts := make([]string, len(batch.BaseColumns))
	for i, c := range batch.BaseColumns {
		parts[i] = c.Name + " " + c.Type
	}
	return strings.Join(parts, ", ")
}

// added is when the registry's columns were agreed.
var added = time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)

// fixture is two ClickHouse shards holding six exact rows, with
// property columns made by hand so every case shows, and a registry
// document:
//
//	column    registry          server 0 (shard 0)         server 1 (shard 1)
//	p_plan    string            Nullable(String)           Nullable(String)   also in events
//	p_amount  int64             Nullable(Int64)            Nullable(String)   differs on 1
//	p_tags    array(string)     Array(Nullable(String))    same
//	p_new     bool              -                          -                  pending
//	p_huge    string, failed    -                          -
//	p_legacy  -                 Nullable(String) /legacy   -                  not in the registry
//
// Rows (received now unless said):
//
//	shard 0: r1 acme plan=pro amount=10 tags=[a] legacy=x  {"/amount":"12x"}                      [/big,/note]
//	         r2 acme                                        {"/amount":"abc","/plan":{"tier":2}}  [/big]
//	         r3 beta plan=free amount=5 tags=[b,NULL], received 2h ago, {"/amount":"old"}        [/old]
//	shard 1: r4 acme plan=pro amount='7'                    {"/amount":"12x"}                      [/big]
//	         r5 beta tags=[c]
//	         r6 beta                                        not json                               [/note]
type fixture struct {
	ch   *chserver.Cluster
	src  *schemaview.Source
	snap schema.Snapshot
}

func setup(t *testing.T) fixture {
	t.Helper()
	ctx := t.Context()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	ch, err := chserver.StartCluster(ctx, t.TempDir(), 2)
	require.NoError(t, err)
	t.Cleanup(ch.Stop)

	for _, srv := range ch.Servers {
		exec(t, srv,
			"CREATE DATABASE surge",
			"CREATE TABLE surge.events_local ("+baseDDL()+", p_plan Nullable(String)) ENGINE = MergeTree() ORDER BY (tenant, event_id)",
			"CREATE TABLE surge.events AS surge.events_local ENGINE = Distributed("+ch.Name+", surge, events_local, shard)",
			// Added after the Distributed table: events lacks them.
			"ALTER TABLE surge.events_local ADD COLUMN p_tags Array(Nullable(String))",
		)
	}
	s0, s1 := ch.Servers[0], ch.Servers[1]
	exec(t, s0,
		"ALTER TABLE surge.events_local ADD COLUMN p_amount Nullable(Int64)",
		"ALTER TABLE surge.events_local ADD COLUMN p_legacy Nullable(String)",
		"ALTER TABLE surge.events_local COMMENT COLUMN p_legacy 'surge:path=/legacy'",
		`INSERT INTO surge.events_local (event_id, tenant, received_at, shard, seq, _conflicts, _unpromoted, p_plan, p_amount, p_tags, p_legacy) VALUES
		 ('r1', 'acme', now(), 0, 1, '{"/amount":"12x"}', ['/big', '/note'], 'pro', 10, ['a'], 'x'),
		 ('r2', 'acme', now(), 0, 2, '{"/amount":"abc","/plan":{"tier": 2}}', ['/big'], NULL, NULL, [], NULL),
		 ('r3', 'beta', now() - 7200, 0, 3, '{"/amount":"old"}', ['/old'], 'free', 5, ['b', NULL], NULL)`,
	)
	exec(t, s1,
		"ALTER TABLE surge.events_local ADD COLUMN p_amount Nullable(String)",
		`INSERT INTO surge.events_local (event_id, tenant, received_at, shard, seq, _conflicts, _unpromoted, p_plan, p_amount, p_tags) VALUES
		 ('r4', 'acme', now(), 1, 1, '{"/amount":"12x"}', ['/big'], 'pro', '7', []),
		 ('r5', 'beta', now(), 1, 2, '', [], NULL, NULL, ['c']),
		 ('r6', 'beta', now(), 1, 3, 'not json', ['/note'], NULL, NULL, [])`,
	)

	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	reg, err := schema.OpenRegistry(ctx, js, "events", 1, 5*time.Second)
	require.NoError(t, err)
	col := func(path, typ, tenant string) *schema.Col {
		return &schema.Col{Path: path, Type: typ, Origin: schema.Inferred, Tenant: tenant, Added: added}
	}
	snap, err := reg.Update(ctx, func(*schema.Doc) (*schema.Doc, bool) {
		return &schema.Doc{
			Columns: map[string]*schema.Col{
				"p_plan":   col("/plan", "string", "acme"),
				"p_amount": col("/amount", "int64", "acme"),
				"p_tags":   col("/tags", "array(string)", "beta"),
				"p_new":    col("/new", "bool", "beta"),
				"p_huge":   {Path: "/huge", Type: "string", CHType: "LowCardinality(String)", Origin: schema.DeclaredOrigin, Added: added},
			},
			Failed: map[string]string{"p_huge": "code: 44, Cannot create column"},
		}, true
	})
	require.NoError(t, err)
	require.Equal(t, uint64(1), snap.Rev)

	src, err := schemaview.Open("surge", [][]string{{s0.Addr()}, {s1.Addr()}}, clickhouse.Auth{}, 10*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, src.Close()) })
	return fixture{ch: ch, src: src, snap: snap}
}

func TestSchemaView(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	a0, a1 := f.ch.Servers[0].Addr(), f.ch.Servers[1].Addr()
	both := func(t0, t1 string) []schemaview.ServerType {
		return []schemaview.ServerType{{Addr: a0, Type: t0}, {Addr: a1, Type: t1}}
	}
	at := func(t time.Time) *time.Time { return &t }
	fill := func(filled, rows uint64, from string) *schemaview.Fill {
		return &schemaview.Fill{Rows: rows, Filled: filled, Rate: float64(filled) / float64(rows), From: from}
	}
	inferred := func(name, path, typ, tenant string) schemaview.Column {
		return schemaview.Column{Name: name, Path: path, Type: typ, Origin: schema.Inferred, Tenant: tenant, Added: at(added), InRegistry: true}
	}
	servers := []schemaview.ServerState{{Addr: a0, Shard: 0}, {Addr: a1, Shard: 1}}

	// columns is every column as the fixture has it, with fills over rows
	// rows of which the given ones are filled: plan, amount, tags, legacy.
	columns := func(rows, plan, amount, tags, legacy uint64) []schemaview.Column {
		amountCol := inferred("p_amount", "/amount", "int64", "acme")
		amountCol.ClickHouse = both("Nullable(Int64)", "Nullable(String)")
		amountCol.Differs = []string{a1}
		amountCol.NotInDistributed = []string{a0, a1}
		amountCol.Fill = fill(amount, rows, "events_local")

		huge := schemaview.Column{Name: "p_huge", Path: "/huge", Type: "string", CHType: "LowCardinality(String)",
			Origin: schema.DeclaredOrigin, Added: at(added), InRegistry: true, Failed: "code: 44, Cannot create column",
			ClickHouse: both("", ""), Missing: []string{a0, a1}}

		newCol := inferred("p_new", "/new", "bool", "beta")
		newCol.ClickHouse, newCol.Missing = both("", ""), []string{a0, a1}

		planCol := inferred("p_plan", "/plan", "string", "acme")
		planCol.ClickHouse = both("Nullable(String)", "Nullable(String)")
		planCol.Fill = fill(plan, rows, "events")

		tagsCol := inferred("p_tags", "/tags", "array(string)", "beta")
		tagsCol.ClickHouse = both("Array(Nullable(String))", "Array(Nullable(String))")
		tagsCol.NotInDistributed = []string{a0, a1}
		tagsCol.Fill = fill(tags, rows, "events_local")

		legacyCol := schemaview.Column{Name: "p_legacy", Path: "/legacy", ClickHouse: both("Nullable(String)", ""),
			Missing: []string{a1}, NotInDistributed: []string{a0}, Fill: fill(legacy, rows, "events_local")}
		return []schemaview.Column{amountCol, huge, newCol, planCol, tagsCol, legacyCol}
	}

	t.Run("ls", func(t *testing.T) {
		got, err := f.src.Columns(ctx, "events", f.snap, "")
		require.NoError(t, err)
		assert.Equal(t, &schemaview.Columns{Table: "events", Revision: 1, Database: "surge", Servers: servers,
			Columns: columns(6, 3, 3, 3, 1)}, got)

		var buf bytes.Buffer
		require.NoError(t, schemaview.RenderColumns(&buf, got))
		out := buf.String()
		assert.True(t, strings.HasPrefix(out, "table events (revision 1), surge.events_local on 2 servers; fill over every tenant\n"), out)
		assert.Regexp(t, `(?m)^p_amount\s+/amount\s+int64\s+Nullable\(Int64\) / Nullable\(String\) DIFFERS \(not in events\)\s+inferred\s+acme\s+2026-12-01T09:30:00Z\s+50\.0% \(3/6\)$`, out)
		assert.Regexp(t, `(?m)^p_huge\s+/huge\s+string\s+MISSING DDL FAILED\s+declared\s+-\s+2026-12-01T09:30:00Z\s+-$`, out)
		assert.Regexp(t, `(?m)^p_plan\s+/plan\s+string\s+Nullable\(String\)\s+inferred\s+acme\s+2026-12-01T09:30:00Z\s+50\.0% \(3/6\)$`, out)
		assert.Regexp(t, `(?m)^p_legacy\s+/legacy\s+-\s+Nullable\(String\) / MISSING \(not in events\)\s+NOT IN REGISTRY\s+-\s+-\s+16\.7% \(1/6\)$`, out)
		assert.Regexp(t, `(?m)^p_tags\s+/tags\s+array\(string\)\s+Array\(Nullable\(String\)\) \(not in events\)\s+inferred\s+beta\s+2026-12-01T09:30:00Z\s+50\.0% \(3/6\)$`, out)
		// After the table: which server holds what, the failed DDL.
		assert.True(t, strings.HasSuffix(out, "\n"+
			"p_amount: "+a0+" Nullable(Int64), "+a1+" Nullable(String) (not int64); not in events on "+a0+", "+a1+"\n"+
			"p_huge: DDL failed for good, batchers no longer fill it: code: 44, Cannot create column\n"+
			"p_tags: not in events on "+a0+", "+a1+"\n"+
			"p_legacy: "+a0+" Nullable(String), "+a1+" MISSING; not in events on "+a0+"\n"), out)
	})

	t.Run("ls for one tenant", func(t *testing.T) {
		got, err := f.src.Columns(ctx, "events", f.snap, "acme")
		require.NoError(t, err)
		assert.Equal(t, &schemaview.Columns{Table: "events", Revision: 1, Database: "surge", Tenant: "acme", Servers: servers,
			Columns: columns(3, 2, 2, 1, 1)}, got)
	})

	since := time.Now().Add(-time.Hour)
	amount := schemaview.ConflictPath{Path: "/amount", Column: "p_amount", Type: "int64", Rows: 3,
		Samples: []json.RawMessage{json.RawMessage(`"12x"`), json.RawMessage(`"abc"`)}}
	plan := schemaview.ConflictPath{Path: "/plan", Column: "p_plan", Type: "string", Rows: 1,
		Samples: []json.RawMessage{json.RawMessage(`{"tier":2}`)}}

	t.Run("conflicts", func(t *testing.T) {
		got, err := f.src.Conflicts(ctx, schemaview.Query{Since: since}, f.snap.Doc)
		require.NoError(t, err)
		assert.Equal(t, &schemaview.Conflicts{Since: since.UTC(), Rows: 4, Sampled: 4, SampleLimit: schemaview.DefaultSample,
			Unreadable: 1, Distinct: 2, Paths: []schemaview.ConflictPath{amount, plan}, From: "events"}, got)

		var buf bytes.Buffer
		require.NoError(t, schemaview.RenderConflicts(&buf, got))
		assert.Equal(t, fmt.Sprintf("conflicts since %s: 4 rows with conflicts in events; read a sample of 4 (at most 100,000), 1 unreadable\n\n", since.UTC().Format(time.RFC3339))+
			"PATH     COLUMN            ROWS  SAMPLES\n"+
			`/amount  p_amount (int64)  3     "12x", "abc"`+"\n"+
			`/plan    p_plan (string)   1     {"tier":2}`+"\n", buf.String())

		// A sample of two rows, the first path only, one tenant's rows.
		got, err = f.src.Conflicts(ctx, schemaview.Query{Since: since, Tenant: "acme", Limit: 1, Sample: 2}, nil)
		require.NoError(t, err)
		assert.Equal(t, uint64(3), got.Rows)
		assert.Equal(t, 2, got.Sampled)
		assert.Equal(t, 2, got.SampleLimit)
		assert.Len(t, got.Paths, 1)
		assert.Equal(t, "/amount", got.Paths[0].Path)
		assert.Empty(t, got.Paths[0].Column, "no registry given")
	})

	big, note := schemaview.UnpromotedPath{Path: "/big", Rows: 3}, schemaview.UnpromotedPath{Path: "/note", Rows: 2}
	t.Run("unpromoted", func(t *testing.T) {
		got, err := f.src.Unpromoted(ctx, schemaview.Query{Since: since})
		require.NoError(t, err)
		assert.Equal(t, &schemaview.Unpromoted{Since: since.UTC(), Rows: 5, WithUnpromoted: 4,
			Paths: []schemaview.UnpromotedPath{big, note}, From: "events"}, got)

		var buf bytes.Buffer
		require.NoError(t, schemaview.RenderUnpromoted(&buf, got))
		assert.Equal(t, fmt.Sprintf("unpromoted since %s: 4 of 5 rows in events left paths out\n\n", since.UTC().Format(time.RFC3339))+
			"PATH   ROWS\n/big   3\n/note  2\n", buf.String())

		got, err = f.src.Unpromoted(ctx, schemaview.Query{Since: since, Tenant: "acme", Limit: 1})
		require.NoError(t, err)
		assert.Equal(t, &schemaview.Unpromoted{Since: since.UTC(), Tenant: "acme", Rows: 3, WithUnpromoted: 3,
			Paths: []schemaview.UnpromotedPath{big}, From: "events"}, got)

		got, err = f.src.Unpromoted(ctx, schemaview.Query{Since: time.Now().Add(-3 * time.Hour)})
		require.NoError(t, err)
		assert.Equal(t, []schemaview.UnpromotedPath{big, note, {Path: "/old", Rows: 1}}, got.Paths, "the older row counts too")
	})

	// Without the Distributed table every figure comes from each shard's
	// events_local, merged: the same counts.
	t.Run("without the distributed table", func(t *testing.T) {
		for _, srv := range f.ch.Servers {
			exec(t, srv, "DROP TABLE surge.events")
		}
		got, err := f.src.Columns(ctx, "events", f.snap, "")
		require.NoError(t, err)
		want := columns(6, 3, 3, 3, 1)
		want[3].Fill.From = "events_local"
		for i := range want {
			want[i].NotInDistributed = nil // said once per server instead
		}
		assert.Equal(t, want, got.Columns)
		assert.Equal(t, []string{a0 + " has no table surge.events", a1 + " has no table surge.events"}, got.Notes)

		conflicts, err := f.src.Conflicts(ctx, schemaview.Query{Since: since}, f.snap.Doc)
		require.NoError(t, err)
		assert.Equal(t, "events_local", conflicts.From)
		assert.Equal(t, []schemaview.ConflictPath{amount, plan}, conflicts.Paths)
		assert.Equal(t, 4, conflicts.Sampled)
		require.Len(t, conflicts.Notes, 1)
		assert.Contains(t, conflicts.Notes[0], "events did not answer")

		unpromoted, err := f.src.Unpromoted(ctx, schemaview.Query{Since: since, Limit: 10})
		require.NoError(t, err)
		assert.Equal(t, "events_local", unpromoted.From)
		assert.Equal(t, []schemaview.UnpromotedPath{big, note}, unpromoted.Paths)
		assert.Equal(t, uint64(5), unpromoted.Rows)
		assert.False(t, unpromoted.Truncated)
	})

	// A shard whose server does not answer is named; the figures leave its
	// rows out and say so.
	t.Run("a server down", func(t *testing.T) {
		src, err := schemaview.Open("surge", [][]string{{a0}, {"127.0.0.1:1"}}, clickhouse.Auth{}, 2*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { assert.NoError(t, src.Close()) })
		got, err := src.Columns(ctx, "events", f.snap, "")
		require.NoError(t, err)
		require.Len(t, got.Servers, 2)
		assert.Empty(t, got.Servers[0].Error)
		assert.Contains(t, got.Servers[1].Error, "127.0.0.1:1")
		require.Len(t, got.Notes, 2)
		assert.Equal(t, a0+" has no table surge.events", got.Notes[0])
		assert.Contains(t, got.Notes[1], "shard 1 did not answer")
		plan := got.Columns[3]
		require.Equal(t, "p_plan", plan.Name)
		assert.Equal(t, []schemaview.ServerType{{Addr: a0, Type: "Nullable(String)"}}, plan.ClickHouse)
		assert.Equal(t, fill(2, 3, "events_local"), plan.Fill, "shard 0's rows only")
	})
}
