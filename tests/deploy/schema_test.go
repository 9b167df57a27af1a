package deploy

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/services/sink"
)

var update = flag.Bool("update", false, "rewrite golden files")

// The database and cluster of the compose stack: the sink's defaults.
var (
	schemaDatabase = sink.DefaultConfig().ClickHouse.Database
	schemaCluster  = sink.DefaultConfig().ClickHouse.Cluster
)

// schemaSQL is what the compose stack's first ClickHouse server runs at
// its first start.
func schemaSQL(t *testing.T) string {
	t.Helper()
	stmts := sink.ReplicatedSchemaStatements(schemaDatabase, schemaCluster)
	var b strings.Builder
	b.WriteString("-- Generated from sink.ReplicatedSchemaStatements by `go test ./tests/deploy -update`; do not edit.\n")
	b.WriteString("-- The sink's replicated DDL: one server runs it, ON CLUSTER creates it on all.\n")
	for _, s := range stmts {
		b.WriteString(s)
		b.WriteString(";\n\n")
	}
	return b.String()
}

func TestSchemaFileMatchesSink(t *testing.T) {
	path := filepath.Join(root, "deployments", "clickhouse", "schema.sql")
	want := schemaSQL(t)
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(want), 0o644))
	}
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, want, string(got), "run go test ./tests/deploy -update")

	for _, table := range []string{"events_local", "events"} {
		require.Contains(t, want, "CREATE TABLE IF NOT EXISTS "+schemaDatabase+"."+table+" ON CLUSTER "+schemaCluster+" ")
	}
	require.Contains(t, want, "CREATE DATABASE IF NOT EXISTS "+schemaDatabase+" ON CLUSTER "+schemaCluster+";")
	require.Contains(t, want, "ENGINE = Distributed("+schemaCluster+", "+schemaDatabase+", events_local, shard)")
	// {shard} and {replica} are each server's macros (cluster.xml): the
	// replicas of a shard share one replication log in ZooKeeper.
	require.Contains(t, want, "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/"+schemaDatabase+"/events_local', '{replica}')")
}
