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

// schemaSQL is what the compose stack's ClickHouse servers run at first
// start: the sink's own DDL, so the two can never drift apart.
func schemaSQL() string {
	var b strings.Builder
	b.WriteString("-- Generated from sink.SchemaStatements by `go test ./tests/deploy -update`; do not edit.\n")
	for _, s := range sink.SchemaStatements("surge", "events_cluster") {
		b.WriteString(s)
		b.WriteString(";\n\n")
	}
	return b.String()
}

func TestSchemaFileMatchesSink(t *testing.T) {
	path := filepath.Join(root, "deployments", "clickhouse", "schema.sql")
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(schemaSQL()), 0o644))
	}
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, schemaSQL(), string(got), "run go test ./tests/deploy -update")
}
