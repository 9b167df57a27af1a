package sink

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/ext"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
)

// Columns are the base columns of events_local in the order the sink
// inserts them: batch.BaseColumns, the one list the table, its migrations
// and the insert derive from.
var Columns = batch.BaseColumnNames()

// columnsDDL are the columns of events_local, one a line.
func columnsDDL() string {
	var b strings.Builder
	for i, c := range batch.BaseColumns {
		if i > 0 {
			b.WriteString(",\n  ")
		}
		b.WriteString(c.Name + " " + c.Type)
		if c.Default != "" {
			b.WriteString(" DEFAULT " + c.Default)
		}
	}
	return b.String()
}

// tableSettings follow the engine of events_local: ReplacingMergeTree keeps
// one row per sorting key when parts merge.
const tableSettings = "PARTITION BY toYYYYMM(ts) ORDER BY (tenant, type, ts, event_id)"

// SchemaStatements is the DDL the sink runs on every shard server at start,
// in order: the database, the local table that holds the rows, and the
// Distributed table that answers queries across the cluster. Each statement
// is idempotent and valid on ClickHouse 18.16 and current releases. `ON
// CLUSTER` needs ZooKeeper, so callers run the statements on each server.
// database and cluster must be plain identifiers (Config.Validate checks).
func SchemaStatements(database, cluster string) []string {
	return []string{
		fmt.Sprintf("CREATE DATABASE IF NOT EXISTS %s", database),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.events_local (
  %s
) ENGINE = ReplacingMergeTree() %s`, database, columnsDDL(), tableSettings),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.events AS %s.events_local
  ENGINE = Distributed(%s, %s, events_local, shard)`, database, database, cluster, database),
	}
}

// ReplicatedSchemaStatements is the DDL of a replicated cluster, run once
// on any one server: each statement goes `ON CLUSTER` through ZooKeeper's
// DDL queue to every server of cluster, and a server that is down runs it
// when it is back. events_local is a ReplicatedReplacingMergeTree, one
// replicated table per ClickHouse shard (its ZooKeeper path, TablePath, names
// the server's {shard} macro) with one replica per server ({replica}).
// Valid on ClickHouse 18.16 and current releases.
func ReplicatedSchemaStatements(database, cluster string) []string {
	return []string{
		fmt.Sprintf("CREATE DATABASE IF NOT EXISTS %s ON CLUSTER %s", database, cluster),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.events_local ON CLUSTER %s (
  %s
) ENGINE = ReplicatedReplacingMergeTree('%s', '{replica}') %s`, database, cluster, columnsDDL(), TablePath(database), tableSettings),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.events ON CLUSTER %s AS %s.events_local
  ENGINE = Distributed(%s, %s, events_local, shard)`, database, cluster, database, cluster, database),
	}
}

// TablePath is events_local's path in ZooKeeper; {shard} is each server's
// macro. The database is part of it, so two databases on one cluster (a
// test's, a staging copy) are separate tables.
func TablePath(database string) string {
	return "/clickhouse/tables/{shard}/" + database + "/events_local"
}

// SchemaTablesQuery counts the sink's tables in database ? on one server:
// 2 once the schema is there.
const SchemaTablesQuery = "SELECT count() FROM system.tables WHERE database = ? AND name IN ('events_local', 'events')"

// InsertQuery is the statement PrepareBatch starts for one batch: every
// base column, in the order of Columns, then the typed columns named.
func InsertQuery(database string, typed ...string) string {
	return "INSERT INTO " + database + ".events_local (" + strings.Join(Columns, ", ") + joinTyped(typed) + ")"
}

func joinTyped(typed []string) string {
	if len(typed) == 0 {
		return ""
	}
	return ", " + strings.Join(typed, ", ")
}

// ColumnsQuery lists the columns of events_local and events in database ?
// on one server: table, name, type.
const ColumnsQuery = "SELECT table, name, type FROM system.columns WHERE database = ? AND table IN ('events_local', 'events')"

// VersionQuery asks a server its release.
const VersionQuery = "SELECT version()"

// baseDefs are the base columns missing from a table whose columns are
// have, to add: the migration from an older table version.
func baseDefs(have map[string]string) []schema.ColumnDef {
	var out []schema.ColumnDef
	for _, c := range batch.BaseColumns {
		if _, ok := have[c.Name]; !ok {
			out = append(out, schema.ColumnDef{Name: c.Name, Type: c.Type, Default: c.Default})
		}
	}
	return out
}

// tableVersion is the version of a table holding the columns have: the
// highest version whose base columns are all there (0: not even the
// first's).
func tableVersion(have map[string]string) int {
	v := batch.TableVersion
	for _, c := range batch.BaseColumns {
		if _, ok := have[c.Name]; !ok && c.Since <= v {
			v = c.Since - 1
		}
	}
	return v
}

// PresenceQuery lists the EVENTS sequences of shard ? between ? and ? a
// server holds, among the rows whose sorting key (tenant, type, ts,
// event_id) is a row of the external table PresenceKeys sent with the
// query. The sorting key, ORDER BY (tenant, type, ts, event_id), narrows
// the read to the granules holding those rows in each part, so its cost
// follows the rows asked about and the parts, never the table's rows (see
// presenceChunk). The rows travel as a block of their own, not as a
// literal list in the query's text: ClickHouse 18.16 took 0.37-0.39 s of
// CPU to parse and plan 10,000 rows asked as 20 lists of 500, and
// 0.01 s for the same rows as one external table.
func PresenceQuery(database string) string {
	return fmt.Sprintf("SELECT DISTINCT seq FROM %s.events_local WHERE shard = ? AND seq >= ? AND seq <= ? AND (tenant, type, ts, event_id) IN (SELECT tenant, type, ts, event_id FROM %s)", database, PresenceKeys)
}

// PresenceKeys names the external table of a presence query's rows.
const PresenceKeys = "presence_keys"

// presenceTable is rows from..to of b's sorting keys as PresenceQuery's
// external table, and how many rows it holds. A row whose ts no DateTime
// holds cannot be in the table, and is left out: its insert fails, and
// the batch goes to the dead letters.
func presenceTable(b *batch.Batch, from, to int) (*ext.Table, int, error) {
	t, err := ext.NewTable(PresenceKeys,
		ext.Column("tenant", "String"), ext.Column("type", "String"),
		ext.Column("ts", "DateTime('UTC')"), ext.Column("event_id", "String"))
	if err != nil {
		return nil, 0, fmt.Errorf("presence keys: %w", err)
	}
	n := 0
	for i := from; i < to; i++ {
		if sec := b.TS[i] / 1_000_000; b.TS[i] < 0 || sec > math.MaxUint32 {
			continue
		}
		if err := t.Append(b.Tenant[i], b.Type[i], time.UnixMicro(b.TS[i]).UTC(), b.EventID[i]); err != nil {
			return nil, 0, fmt.Errorf("presence keys: %w", err)
		}
		n++
	}
	return t, n, nil
}
