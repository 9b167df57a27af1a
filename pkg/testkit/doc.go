// Package testkit holds the harnesses that start real servers for Surge's
// tests and for the local stack (`surge up`, `surge bench`): an embedded
// NATS JetStream server (natsserver, natstest), a cluster of standalone
// nats-server processes (natscluster), clickhouse-server processes, alone
// or as replicated shards (chserver), ZooKeeper for them (zookeeper), the
// real Jaeger v2 with its query API (jaeger, jaegertest; its binary from
// gotools), the surge command built for tests that run it (surgebin),
// a copy of every block inserted into events_local that no merge can
// fold, for the exactly-once checks (chaudit), and the JSON messages of
// NATS and MQTT producers (producers);
// chserver and zookeeper install the Debian packages where missing. The
// harnesses that run child processes share proc (start, stop, kill, its
// log) and ports (free ports below the kernel's ephemeral range).
// They are development tooling: no service imports them.
package testkit
