package sink

import "fmt"

// Columns are the columns of events_local in the order the sink inserts them.
var Columns = []string{"event_id", "tenant", "user_id", "type", "ts", "received_at", "properties", "shard", "seq"}

// columnsDDL are the columns of events_local.
const columnsDDL = `event_id String, tenant String, user_id String, type String,
  ts DateTime('UTC'), received_at DateTime('UTC'), properties String,
  shard UInt16, seq UInt64`

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
) ENGINE = ReplacingMergeTree() %s`, database, columnsDDL, tableSettings),
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
) ENGINE = ReplicatedReplacingMergeTree('%s', '{replica}') %s`, database, cluster, columnsDDL, TablePath(database), tableSettings),
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

// InsertQuery is the statement PrepareBatch starts for one batch.
func InsertQuery(database string) string {
	return fmt.Sprintf("INSERT INTO %s.events_local (event_id, tenant, user_id, type, ts, received_at, properties, shard, seq)", database)
}

// WatermarkQuery reads the highest EVENTS sequence of shard ? held by a
// server; 0 when the shard has no rows.
func WatermarkQuery(database string) string {
	return fmt.Sprintf("SELECT max(seq) FROM %s.events_local WHERE shard = ?", database)
}

// PresentQuery lists the EVENTS sequences of shard ? between ? and ? held
// by a server.
func PresentQuery(database string) string {
	return fmt.Sprintf("SELECT DISTINCT seq FROM %s.events_local WHERE shard = ? AND seq >= ? AND seq <= ?", database)
}
