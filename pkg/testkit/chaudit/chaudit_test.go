package chaudit_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/surge-events/surge/pkg/testkit/chaudit"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestReplicatedInserts checks on real replicas what the audit relies on:
// a block is copied once, on the replica that took it; a block the
// replicated table deduplicates is not copied again; a block that differs
// is, and stays counted after a merge folded it away in the table.
func TestReplicatedInserts(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	require.NoError(t, zookeeper.EnsureInstalled(ctx, t.Logf))
	zk, err := zookeeper.Start(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = zk.Stop() })
	c, err := chserver.Start(ctx, t.TempDir(), chserver.Options{Shards: 1, Replicas: 2, ZooKeeper: zk.Addr()})
	require.NoError(t, err)
	t.Cleanup(c.Stop)
	servers := []string{c.Servers[0].HTTPAddr(), c.Servers[1].HTTPAddr()}
	query := func(addr, sql string) string {
		t.Helper()
		out, err := chserver.Query(addr, sql)
		require.NoError(t, err, sql)
		return out
	}

	// The audit waits for the table, made here as the sink makes it
	// ON CLUSTER: a replicated ReplacingMergeTree.
	installed := make(chan error, 1)
	go func() { installed <- chaudit.Install(ctx, servers, "ev") }()
	for _, srv := range servers {
		query(srv, "CREATE DATABASE IF NOT EXISTS ev")
		query(srv, `CREATE TABLE IF NOT EXISTS ev.events_local (event_id String, tenant String, shard UInt16, seq UInt64, v String)
			ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/0/ev/events_local', '{replica}') ORDER BY (tenant, event_id)`)
	}
	require.NoError(t, <-installed)
	require.NoError(t, chaudit.Install(ctx, servers, "ev"), "install is idempotent")

	block := "INSERT INTO ev.events_local VALUES ('a', 't1', 0, 1, 'x'), ('b', 't1', 0, 2, 'x'), ('c', 't2', 0, 3, 'x')"
	query(servers[0], block)
	query(servers[0], block) // deduplicated on the same replica
	query(servers[1], block) // deduplicated on the other replica
	got, err := chaudit.Inserted(servers, "ev", "")
	require.NoError(t, err)
	require.Equal(t, map[string]int{"a": 1, "b": 1, "c": 1}, got)
	require.NoError(t, chaudit.Compare(got, map[string]bool{"a": true, "b": true, "c": true}).Err())

	// A block that differs in a value is no retry ClickHouse drops.
	query(servers[1], "INSERT INTO ev.events_local VALUES ('a', 't1', 0, 1, 'y'), ('b', 't1', 0, 2, 'x'), ('c', 't2', 0, 3, 'x')")
	query(servers[0], "OPTIMIZE TABLE ev.events_local FINAL")
	require.Equal(t, "3", query(servers[0], "SELECT count() FROM ev.events_local FINAL"), "the table folds the doubled rows")
	got, err = chaudit.Inserted(servers, "ev", "")
	require.NoError(t, err)
	require.Equal(t, map[string]int{"a": 2, "b": 2, "c": 2}, got, "the audit does not")
	got, err = chaudit.Inserted(servers, "ev", "t1")
	require.NoError(t, err)
	require.Equal(t, map[string]int{"a": 2, "b": 2}, got)
	require.EqualError(t, chaudit.Compare(got, map[string]bool{"a": true, "b": true}).Err(),
		"not exactly once: 2 inserted more than once [a x2 b x2], 0 never inserted [], 0 inserted but not wanted []")
}

func TestCompare(t *testing.T) {
	want := map[string]struct{}{"a": {}, "b": {}}
	cases := []struct {
		name       string
		inserted   map[string]int
		err        string
		atMostOnce string
	}{
		{name: "each once", inserted: map[string]int{"a": 1, "b": 1}},
		{name: "twice", inserted: map[string]int{"a": 1, "b": 2},
			err:        "not exactly once: 1 inserted more than once [b x2], 0 never inserted [], 0 inserted but not wanted []",
			atMostOnce: "not at most once: 1 inserted more than once [b x2], 0 inserted but not wanted []"},
		{name: "missing", inserted: map[string]int{"a": 1},
			err: "not exactly once: 0 inserted more than once [], 1 never inserted [b], 0 inserted but not wanted []"},
		{name: "unwanted", inserted: map[string]int{"a": 1, "b": 1, "z": 1},
			err:        "not exactly once: 0 inserted more than once [], 0 never inserted [], 1 inserted but not wanted [z]",
			atMostOnce: "not at most once: 0 inserted more than once [], 1 inserted but not wanted [z]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := chaudit.Compare(c.inserted, want)
			for _, check := range []struct {
				err  error
				want string
			}{{r.Err(), c.err}, {r.AtMostOnce(), c.atMostOnce}} {
				if check.want == "" {
					require.NoError(t, check.err)
				} else {
					require.EqualError(t, check.err, check.want)
				}
			}
		})
	}
}
