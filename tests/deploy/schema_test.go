package deploy

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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

// replicatedEngine keeps each shard's events_local on all its replicas:
// {shard} and {replica} are each server's macros (cluster.xml), so the
// replicas of a shard share one replication log in ZooKeeper.
const replicatedEngine = "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/%s/events_local', '{replica}')"

// createObject is the head of every statement of the sink's DDL.
var createObject = regexp.MustCompile(`^CREATE (?:DATABASE|TABLE) IF NOT EXISTS [A-Za-z0-9_.]+(?:\s|$)`)

// replicatedSchema is the sink's own DDL (sink.SchemaStatements) made for
// a replicated cluster: every statement ON CLUSTER, so one server creates
// the schema on all, and events_local ReplicatedReplacingMergeTree instead
// of ReplacingMergeTree. Columns, sorting key and the Distributed table
// stay the sink's, so the two can never drift apart; a change in the
// shape of the sink's DDL fails here instead of being rewritten blindly.
func replicatedSchema(database, cluster string) ([]string, error) {
	var out []string
	engines := 0
	for _, s := range sink.SchemaStatements(database, cluster) {
		head := createObject.FindString(s)
		if head == "" {
			return nil, fmt.Errorf("the sink's DDL changed shape, update replicatedSchema: %q", s)
		}
		if strings.Contains(s, "ON CLUSTER") || strings.Contains(s, "Replicated") {
			return nil, fmt.Errorf("the sink's DDL is already replicated: generate schema.sql from it instead: %q", s)
		}
		name := strings.TrimSpace(head)
		s = name + " ON CLUSTER " + cluster + s[len(name):]
		engines += strings.Count(s, "ENGINE = ReplacingMergeTree()")
		s = strings.ReplaceAll(s, "ENGINE = ReplacingMergeTree()", fmt.Sprintf(replicatedEngine, database))
		out = append(out, s)
	}
	if engines != 1 {
		return nil, fmt.Errorf("the sink's DDL has %d ReplacingMergeTree() tables, want 1 (events_local)", engines)
	}
	return out, nil
}

// schemaSQL is what the compose stack's first ClickHouse server runs at
// its first start.
func schemaSQL(t *testing.T) string {
	t.Helper()
	stmts, err := replicatedSchema(schemaDatabase, schemaCluster)
	require.NoError(t, err)
	var b strings.Builder
	b.WriteString("-- Generated from sink.SchemaStatements by `go test ./tests/deploy -update`; do not edit.\n")
	b.WriteString("-- The sink's DDL made replicated: one server runs it, ON CLUSTER creates it on all.\n")
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
}
