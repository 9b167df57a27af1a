package sink

import "fmt"

// Columns are the columns of events_local in the order the sink inserts them.
var Columns = []string{"event_id", "tenant", "user_id", "type", "ts", "received_at", "properties", "shard", "seq"}

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
  event_id String, tenant String, user_id String, type String,
  ts DateTime('UTC'), received_at DateTime('UTC'), properties String,
  shard UInt16, seq UInt64
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (tenant, type, ts, event_id)`, database),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.events AS %s.events_local
  ENGINE = Distributed(%s, %s, events_local, shard)`, database, database, cluster, database),
	}
}

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
