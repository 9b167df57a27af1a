-- Generated from sink.ReplicatedSchemaStatements by `go test ./tests/deploy -update`; do not edit.
-- The sink's replicated DDL: one server runs it, ON CLUSTER creates it on all.
CREATE DATABASE IF NOT EXISTS surge ON CLUSTER events_cluster;

CREATE TABLE IF NOT EXISTS surge.events_local ON CLUSTER events_cluster (
  event_id String,
  tenant String,
  user_id String,
  type String,
  ts DateTime('UTC'),
  received_at DateTime('UTC'),
  properties String,
  shard UInt16,
  seq UInt64,
  _conflicts String DEFAULT '',
  _unpromoted Array(String)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/surge/events_local', '{replica}') PARTITION BY toYYYYMM(ts) ORDER BY (tenant, type, ts, event_id);

CREATE TABLE IF NOT EXISTS surge.events ON CLUSTER events_cluster AS surge.events_local
  ENGINE = Distributed(events_cluster, surge, events_local, shard);

