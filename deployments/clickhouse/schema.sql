-- Generated from sink.SchemaStatements by `go test ./tests/deploy -update`; do not edit.
CREATE DATABASE IF NOT EXISTS surge;

CREATE TABLE IF NOT EXISTS surge.events_local (
  event_id String, tenant String, user_id String, type String,
  ts DateTime('UTC'), received_at DateTime('UTC'), properties String,
  shard UInt16, seq UInt64
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (tenant, type, ts, event_id);

CREATE TABLE IF NOT EXISTS surge.events AS surge.events_local
  ENGINE = Distributed(events_cluster, surge, events_local, shard);

