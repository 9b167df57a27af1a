package sink_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/services/sink"
)

// project gives b its typed projection: the columns cols (rows each, in
// name order), no conflicts and nothing unpromoted.
func project(b *batch.Batch, cols ...batch.Column) *batch.Batch {
	b.Conflicts = make([]string, b.Len())
	b.Unpromoted = make([][]string, b.Len())
	b.Typed = cols
	slices.SortFunc(b.Typed, func(x, y batch.Column) int { return strings.Compare(x.Name, y.Name) })
	return b
}

// ints is an Int64 column of one non-NULL value per row.
func ints(name string, vals ...int64) batch.Column {
	return batch.Column{Name: name, Kind: batch.Int64, Null: make([]bool, len(vals)), Ints: vals}
}

// strs runs query on server i and returns its rows, every column read as
// a String (the query converts them).
func (e *testEnv) strs(i int, query string, args ...any) [][]string {
	e.t.Helper()
	out, err := e.tryStrs(i, query, args...)
	require.NoError(e.t, err)
	return out
}

// tryStrs is strs for conditions polled off the test goroutine.
func (e *testEnv) tryStrs(i int, query string, args ...any) ([][]string, error) {
	ctx, cancel := context.WithTimeout(e.t.Context(), 10*time.Second)
	defer cancel()
	rows, err := e.conns[i].Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		row := make([]string, len(rows.Columns()))
		dest := make([]any, len(row))
		for j := range row {
			dest[j] = &row[j]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, rows.Err()
}

// serverOf is the release of server i.
func (e *testEnv) serverOf(i int) schema.Server {
	e.t.Helper()
	v := e.strs(i, "SELECT version()")
	s, err := schema.ParseServer(v[0][0])
	require.NoError(e.t, err)
	return s
}

// columnsOf lists the columns of table on server i: name, type, default
// expression and comment each, in table order.
func (e *testEnv) columnsOf(i int, table string) [][]string {
	e.t.Helper()
	return e.strs(i, "SELECT name, type, default_expression, comment FROM system.columns WHERE database = 'surge' AND table = ?", table)
}

// alters counts the statements ALTER TABLE surge.<table> ADD COLUMN...
// naming column that server i started (its query log flushed first).
func (e *testEnv) alters(i int, table, column string) uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(e.t, e.conns[i].Exec(ctx, "SYSTEM FLUSH LOGS"))
	return e.count(i, "SELECT count() FROM system.query_log WHERE type = 1 AND query LIKE ?",
		"ALTER TABLE surge."+table+" ADD COLUMN %"+column+" %")
}

// v1Statements make the tables as the sink made them before typed
// columns (table version 1): written out by hand, as that code had them.
var v1Statements = []string{
	"CREATE DATABASE IF NOT EXISTS surge",
	`CREATE TABLE surge.events_local (
  event_id String, tenant String, user_id String, type String,
  ts DateTime('UTC'), received_at DateTime('UTC'), properties String,
  shard UInt16, seq UInt64
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (tenant, type, ts, event_id)`,
	`CREATE TABLE surge.events AS surge.events_local
  ENGINE = Distributed(events_cluster, surge, events_local, shard)`,
}

// TestSinkMigratesAVersion1Table: tables made by the sink before typed
// columns, holding rows, gain _conflicts and _unpromoted (local table and
// Distributed table, every server) when a current sink starts, and a
// projected batch lands with a new typed column; the old rows read the
// new columns' defaults.
func TestSinkMigratesAVersion1Table(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for i := range e.conns {
		for _, stmt := range v1Statements {
			require.NoError(t, e.conns[i].Exec(ctx, stmt))
		}
	}
	// Rows the old sink inserted: shard 0's EVENTS messages 1 and 2.
	old := makeBatch(0, 1, 2)
	bt, err := e.conns[0].PrepareBatch(ctx, "INSERT INTO surge.events_local (event_id, tenant, user_id, type, ts, received_at, properties, shard, seq)")
	require.NoError(t, err)
	for i := range old.Len() {
		require.NoError(t, bt.Append(old.EventID[i], old.Tenant[i], old.UserID[i], old.Type[i],
			time.UnixMicro(old.TS[i]), time.UnixMicro(old.ReceivedAt[i]), old.Properties[i], uint16(0), old.Seq[i]))
	}
	require.NoError(t, bt.Send())

	e.startSink(e.config(2))
	v1 := [][]string{
		{"event_id", "String", "", ""}, {"tenant", "String", "", ""}, {"user_id", "String", "", ""}, {"type", "String", "", ""},
		{"ts", "DateTime('UTC')", "", ""}, {"received_at", "DateTime('UTC')", "", ""}, {"properties", "String", "", ""},
		{"shard", "UInt16", "", ""}, {"seq", "UInt64", "", ""},
	}
	v2 := append(slices.Clone(v1), []string{"_conflicts", "String", "''", ""}, []string{"_unpromoted", "Array(String)", "", ""})
	for i := range e.conns {
		for _, table := range []string{"events_local", "events"} {
			require.Equal(t, v2, e.columnsOf(i, table), "%s on server %d", table, i)
		}
	}

	b0 := project(makeBatch(0, 3, 4), ints("p_n", 1, 2, 3))
	b0.Conflicts[0] = `{"/x":"y"}`
	b0.Unpromoted[2] = []string{"/u"}
	b1 := project(makeBatch(1, 1, 1), ints("p_n", 7, 8))
	e.publish(b0, b0.ID())
	e.publish(b1, b1.ID())
	e.waitRows(old.Len() + b0.Len() + b1.Len())

	const q = "SELECT event_id, toString(seq), ifNull(toString(p_n), 'NULL'), _conflicts, toString(_unpromoted) FROM surge.events WHERE shard = ? ORDER BY seq, event_id"
	want := [][]string{
		{eventID(0, 1, 0), "1", "NULL", "", "[]"},
		{eventID(0, 1, 1), "1", "NULL", "", "[]"},
		{eventID(0, 2, 0), "2", "NULL", "", "[]"},
		{eventID(0, 2, 1), "2", "NULL", "", "[]"},
		{eventID(0, 2, 2), "2", "NULL", "", "[]"},
		{eventID(0, 3, 0), "3", "1", `{"/x":"y"}`, "[]"},
		{eventID(0, 4, 0), "4", "2", "", "[]"},
		{eventID(0, 4, 1), "4", "3", "", "['/u']"},
	}
	require.Len(t, want, old.Len()+b0.Len())
	// The Distributed tables get p_n in the background: poll them.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err := e.tryStrs(0, q, 0)
		if assert.NoError(c, err) {
			assert.Equal(c, want, got)
		}
		got, err = e.tryStrs(1, q, 1)
		if assert.NoError(c, err) {
			assert.Equal(c, [][]string{
				{eventID(1, 1, 0), "1", "7", "", "[]"},
				{eventID(1, 1, 1), "1", "8", "", "[]"},
			}, got)
		}
	}, 30*time.Second, 20*time.Millisecond)
	for i := range e.conns {
		for _, table := range []string{"events_local", "events"} {
			require.Equal(t, append(slices.Clone(v2), []string{"p_n", "Nullable(Int64)", "", ""}), e.columnsOf(i, table), "%s on server %d", table, i)
		}
	}
}

// TestSinkLandsEveryKind: a projected batch with a column of every kind
// (NULL rows, NULL elements, empty arrays) lands with exact values in
// columns of the server's types, with the path comments where the server
// keeps them; a value the column's type cannot hold without loss (a
// fraction of a second in DateTime, on 18.16) is NULL and in the row's
// _conflicts.
func TestSinkLandsEveryKind(t *testing.T) {
	e := newEnv(t)
	paths := map[string]*schema.Col{}
	s := e.sinkWithRegistry(e.config(2), paths)
	server := e.serverOf(0)

	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	b := makeBatch(0, 1, 3) // 6 rows
	require.Equal(t, 6, b.Len())
	project(b,
		batch.Column{Name: "p_ok", Kind: batch.Bool, Null: []bool{false, true, false, false, false, false}, Ints: []int64{1, 0, 0, 1, 0, 1}},
		batch.Column{Name: "p_n", Kind: batch.Int64, Null: []bool{false, false, true, false, false, false},
			Ints: []int64{0, -9223372036854775808, 0, 9223372036854775807, 42, -1}},
		batch.Column{Name: "p_price", Kind: batch.Float64, Null: []bool{false, false, false, true, false, false},
			Floats: []float64{9.99, -0.5, 1e300, 0, 2.5, 0}},
		batch.Column{Name: "p_plan", Kind: batch.String, Null: []bool{false, false, false, false, true, false},
			Strs: []string{"pro", `é 'q' \ "d"`, "", "x", "", "last"}},
		batch.Column{Name: "p_at", Kind: batch.DateTime, Null: []bool{false, false, false, false, false, true},
			Ints: []int64{at.UnixMicro(), time.Unix(1, 0).UnixMicro(), time.Date(2105, 12, 31, 23, 59, 59, 0, time.UTC).UnixMicro(),
				at.Add(500 * time.Millisecond).UnixMicro(), at.Add(time.Hour).UnixMicro(), 0}},
		batch.Column{Name: "p_tags", Kind: batch.ArrayOf(batch.String), Lens: []uint32{2, 0, 1, 3, 0, 1},
			ElemNull: []bool{false, true, false, false, false, true, false}, Strs: []string{"a", "", "b", "c", "d", "", "e"}},
		batch.Column{Name: "p_nums", Kind: batch.ArrayOf(batch.Int64), Lens: []uint32{1, 2, 0, 0, 0, 1},
			ElemNull: []bool{true, false, true, false}, Ints: []int64{0, 5, 0, -6}},
		batch.Column{Name: "p_fs", Kind: batch.ArrayOf(batch.Float64), Lens: []uint32{0, 0, 2, 0, 0, 0},
			ElemNull: []bool{false, true}, Floats: []float64{1.5, 0}},
		batch.Column{Name: "p_flags", Kind: batch.ArrayOf(batch.Bool), Lens: []uint32{3, 0, 0, 0, 0, 0},
			ElemNull: []bool{false, true, false}, Ints: []int64{1, 0, 0}},
	)
	b.Conflicts[1] = `{"/zz":"x"}`
	b.Unpromoted[2] = []string{"/u1", "/u2"}
	for _, c := range b.Typed {
		paths[c.Name] = &schema.Col{Path: "/" + strings.TrimPrefix(c.Name, "p_"), Type: c.Kind.String()}
	}
	paths["p_plan"].CHType = "LowCardinality(String)" // as an operator declares it
	e.publish(b, b.ID())
	e.waitRows(b.Len())

	// Types and comments, of both tables on every server.
	var want [][]string
	for _, c := range b.Typed {
		comment := ""
		if server.ColumnComments() {
			comment = schema.PathComment + paths[c.Name].Path
		}
		want = append(want, []string{c.Name, schema.ColumnType(c.Kind, paths[c.Name].CHType, server), "", comment})
	}
	slices.SortFunc(want, func(x, y []string) int { return strings.Compare(x[0], y[0]) })
	for i := range e.conns {
		for _, table := range []string{"events_local", "events"} {
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				cols, err := e.tryStrs(i, "SELECT name, type, default_expression, comment FROM system.columns WHERE database = 'surge' AND table = ? AND startsWith(name, 'p_') ORDER BY name", table)
				if assert.NoError(c, err) {
					assert.Equal(c, want, cols)
				}
			}, 30*time.Second, 20*time.Millisecond, "%s on server %d", table, i)
		}
	}
	if server.DateTime64() || server.Bool() {
		t.Skipf("values below are written for 18.16's types (server %s)", server)
	}
	require.Equal(t, "Nullable(DateTime('UTC'))", want[0][1], "18.16's DateTime has seconds")

	got := e.strs(0, `SELECT event_id, ifNull(toString(p_ok), 'NULL'), ifNull(toString(p_n), 'NULL'), ifNull(toString(p_price), 'NULL'),
		ifNull(p_plan, 'NULL'), ifNull(toString(p_at), 'NULL'), toString(p_tags), toString(p_nums), toString(p_fs), toString(p_flags),
		_conflicts, toString(_unpromoted)
		FROM surge.events ORDER BY seq, event_id`)
	require.Equal(t, [][]string{
		{eventID(0, 1, 0), "1", "0", "9.99", "pro", "2026-11-27 10:00:00", "['a',NULL]", "[NULL]", "[]", "[1,NULL,0]", "", "[]"},
		{eventID(0, 1, 1), "NULL", "-9223372036854775808", "-0.5", `é 'q' \ "d"`, "1970-01-01 00:00:01", "[]", "[5,NULL]", "[]", "[]", `{"/zz":"x"}`, "[]"},
		{eventID(0, 2, 0), "0", "NULL", "1e300", "", "2105-12-31 23:59:59", "['b']", "[]", "[1.5,NULL]", "[]", "", "['/u1','/u2']"},
		{eventID(0, 2, 1), "1", "9223372036854775807", "NULL", "x", "NULL", "['c','d',NULL]", "[]", "[]", "[]", `{"/at":"2026-11-27T10:00:00.5Z"}`, "[]"},
		{eventID(0, 2, 2), "0", "42", "2.5", "NULL", "2026-11-27 11:00:00", "[]", "[]", "[]", "[]", "", "[]"},
		{eventID(0, 3, 0), "1", "-1", "0", "last", "NULL", "['e']", "[-6]", "[]", "[]", "", "[]"},
	}, got)
	require.Equal(t, 9.0, testutilGauge(t, s, "surge_sink_schema_columns", "events_local"))
}

// TestSinkFollowsATypeChangedByHand: an operator changes a typed column's
// type while the sink runs (Int64 to String); the next batch naming it is
// converted to the new type after at most one failed attempt, never dead-lettered,
// and a value the new type cannot hold goes to _conflicts.
func TestSinkFollowsATypeChangedByHand(t *testing.T) {
	e := newEnv(t)
	s := e.startSink(e.config(2))
	first := project(makeBatch(0, 1, 1), ints("p_n", 1, 2))
	e.publish(first, first.ID())
	e.waitRows(first.Len())

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	require.NoError(t, e.conns[0].Exec(ctx, "ALTER TABLE surge.events_local MODIFY COLUMN p_n Nullable(String)"))
	second := project(makeBatch(0, 2, 2), ints("p_n", 30, 40, 50))
	e.publish(second, second.ID())
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.localRows(0, 0)
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(first.Len()+second.Len()), n)
		}
	}, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, [][]string{
		{eventID(0, 1, 0), "1"}, {eventID(0, 1, 1), "2"},
		{eventID(0, 2, 0), "30"}, {eventID(0, 2, 1), "40"}, {eventID(0, 2, 2), "50"},
	}, e.strs(0, "SELECT event_id, p_n FROM surge.events_local ORDER BY seq, event_id"))
	require.Zero(t, value(s.shard(0).DeadLetters))
	// One attempt on the old type, or none when the sink's background
	// column work (p_n on the other tables) read the columns again after
	// the change.
	require.LessOrEqual(t, value(s.shard(0).Retries), 1.0, "at most one attempt on the old type")

	// Back to a number type narrower than the values: those that do not
	// fit go to _conflicts.
	require.NoError(t, e.conns[0].Exec(ctx, "ALTER TABLE surge.events_local MODIFY COLUMN p_n Nullable(Int8)"))
	third := project(makeBatch(0, 3, 3), ints("p_n", 127))
	fourth := project(makeBatch(0, 4, 4), ints("p_n", 128, -128))
	e.publish(third, third.ID())
	e.publish(fourth, fourth.ID())
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.localRows(0, 0)
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(rowsIn(1, 4)), n)
		}
	}, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, [][]string{
		{eventID(0, 3, 0), "127", ""},
		{eventID(0, 4, 0), "NULL", `{"p_n":128}`},
		{eventID(0, 4, 1), "-128", ""},
	}, e.strs(0, "SELECT event_id, ifNull(toString(p_n), 'NULL'), _conflicts FROM surge.events_local WHERE seq >= 3 ORDER BY seq, event_id"))
	require.Zero(t, value(s.shard(0).DeadLetters))
}

// sinkWithRegistry starts a sink whose column DDL reads the registry's
// columns from cols (the test fills it before publishing).
func (e *testEnv) sinkWithRegistry(cfg sink.Config, cols map[string]*schema.Col) *runningSink {
	e.t.Helper()
	var mu sync.Mutex
	return e.startSinkWith(cfg, func(s *sink.Service) {
		s.UseRegistry(func(name string) *schema.Col {
			mu.Lock()
			defer mu.Unlock()
			return cols[name]
		})
	})
}

// testutilGauge is the value of gauge name{table} of s's registry.
func testutilGauge(t *testing.T, s *runningSink, name, table string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{table=%q}", name, table)
	return 0
}

// TestConcurrentInsertsAddANewColumnOnce: two shards of one ClickHouse
// server insert batches naming the same new column at once, through one
// process's stores: the local table is altered once, the other server's
// local table once, each Distributed table once, and both batches land.
func TestConcurrentInsertsAddANewColumnOnce(t *testing.T) {
	e := newEnv(t)
	cfg := e.config(4).ClickHouse
	stores, err := sink.OpenStores(cfg, prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() {
		for _, st := range stores {
			_ = st.Close()
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, st := range stores {
		require.NoError(t, st.EnsureSchema(ctx))
	}

	// Shards 0 and 2 live on server 0.
	batches := []*batch.Batch{
		project(makeBatch(0, 1, 2), batch.Column{Name: "p_coupon", Kind: batch.String, Null: make([]bool, 5), Strs: []string{"C1", "C2", "C3", "C4", "C5"}}),
		project(makeBatch(2, 1, 1), batch.Column{Name: "p_coupon", Kind: batch.String, Null: []bool{false, true}, Strs: []string{"C6", ""}}),
	}
	start := make(chan struct{})
	errs := make(chan error, len(batches))
	for _, b := range batches {
		go func() {
			<-start
			errs <- stores[0].Insert(ctx, b)
		}()
	}
	close(start)
	for range batches {
		require.NoError(t, <-errs)
	}

	require.Equal(t, [][]string{
		{eventID(0, 1, 0), "C1"}, {eventID(0, 1, 1), "C2"}, {eventID(0, 2, 0), "C3"}, {eventID(0, 2, 1), "C4"}, {eventID(0, 2, 2), "C5"},
		{eventID(2, 1, 0), "C6"}, {eventID(2, 1, 1), "NULL"},
	}, e.strs(0, "SELECT event_id, ifNull(p_coupon, 'NULL') FROM surge.events_local ORDER BY shard, seq, event_id"))
	// The rest of the cluster follows in the background.
	for i := range e.conns {
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			for _, table := range []string{"events_local", "events"} {
				n, err := e.tryCount(i, "SELECT count() FROM system.columns WHERE database = 'surge' AND table = ? AND name = 'p_coupon'", table)
				if assert.NoError(c, err) {
					assert.Equal(c, uint64(1), n, "%s on server %d", table, i)
				}
			}
		}, 30*time.Second, 20*time.Millisecond)
	}
	require.Equal(t, uint64(6), e.count(1, "SELECT count(p_coupon) FROM surge.events"), "through the other server's Distributed table: one NULL")
	for i := range e.conns {
		require.Equal(t, uint64(1), e.alters(i, "events_local", "p_coupon"), "ALTERs of events_local on server %d", i)
		require.Equal(t, uint64(1), e.alters(i, "events", "p_coupon"), "ALTERs of events on server %d", i)
	}
}

// TestReplicatedSinkAddsAColumnWithAReplicaDown: with one replica of
// ClickHouse shard 1 killed, batches naming a new column land on both
// shards within seconds: the ALTER on the live replica answers Code 341
// (the dead one applies it when back), and nothing waits for the dead
// replica. Restarted, the replica has the column and every row, and every
// server's Distributed table counts the column's values.
func TestReplicatedSinkAddsAColumnWithAReplicaDown(t *testing.T) {
	e := newReplicatedEnv(t)
	e.startSink(e.replicatedConfig(2))
	for k := range 2 {
		b := makeBatch(k, 1, 2)
		e.publish(b, b.ID())
	}
	e.requireExactlyOnce(map[int]uint64{0: 2, 1: 2})

	dead := server(1, 1)
	require.NoError(t, e.ch.Servers[dead].Kill())
	sent := time.Now()
	var batches []*batch.Batch
	for k := range 2 {
		b := makeBatch(k, 3, 5)
		region := batch.Column{Name: "p_region", Kind: batch.String, Null: make([]bool, b.Len())}
		for i := range b.Len() {
			region.Strs = append(region.Strs, fmt.Sprintf("eu-%d-%d", k, i))
		}
		batches = append(batches, project(b, region))
		e.publish(b, b.ID())
	}
	for k, b := range batches {
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			n, err := e.tryUint(server(k, 0), "SELECT count() FROM surge.events_local WHERE shard = ? AND seq >= 3", k)
			if assert.NoError(c, err) {
				assert.Equal(c, uint64(b.Len()), n)
			}
		}, 30*time.Second, 20*time.Millisecond, "shard %d", k)
	}
	landed := time.Since(sent)
	t.Logf("both batches landed %s after they were sent, a replica of shard 1 down", landed.Round(time.Millisecond))
	require.Less(t, landed, 20*time.Second, "nothing waits out a timeout for the dead replica")
	require.NoError(t, e.conns[server(1, 0)].Exec(t.Context(), "SYSTEM FLUSH LOGS"))
	require.Equal(t, uint64(1), e.count(server(1, 0), `SELECT count() FROM system.query_log
		WHERE query LIKE 'ALTER TABLE surge.events_local ADD COLUMN p_region %' AND exception LIKE '%Code: 341%'`),
		"the live replica of shard 1 answered: done here, inactive replicas later")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	restarted := time.Now()
	require.NoError(t, e.ch.Servers[dead].Start(ctx))
	sentRows := batches[0].Len() + batches[1].Len()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for i := range e.conns {
			n, err := e.tryUint(i, "SELECT count(p_region) FROM surge.events")
			if assert.NoError(c, err, "server %d", i) {
				assert.Equal(c, uint64(sentRows), n, "count(p_region) through events on server %d", i)
			}
		}
		live, err := e.tryUint(server(1, 0), "SELECT count() FROM surge.events_local")
		assert.NoError(c, err)
		back, err := e.tryUint(dead, "SELECT count() FROM surge.events_local")
		assert.NoError(c, err)
		assert.Equal(c, live, back, "the restarted replica caught up")
		assert.Equal(c, uint64(rowsIn(1, 5)), back)
	}, 2*time.Minute, 50*time.Millisecond)
	// The killed replica's ZooKeeper session outlives it (30 s): until it
	// expires, the restarted replica cannot take its place and fetches
	// nothing.
	t.Logf("the restarted replica caught up %s after its start", time.Since(restarted).Round(time.Millisecond))
	require.Equal(t, [][]string{{"p_region", "Nullable(String)"}},
		e.strs(dead, "SELECT name, type FROM system.columns WHERE database = 'surge' AND table = 'events_local' AND startsWith(name, 'p_')"))
	e.requireExactlyOnce(map[int]uint64{0: 5, 1: 5})
	for k, b := range batches {
		for _, r := range []int{0, 1} {
			got := e.strs(server(k, r), "SELECT p_region FROM surge.events_local WHERE shard = ? AND seq >= 3 ORDER BY seq, event_id", k)
			require.Len(t, got, b.Len())
			for i, row := range got {
				require.Equal(t, b.Typed[0].Strs[i], row[0], "shard %d replica %d row %d", k, r, i)
			}
		}
	}
}
