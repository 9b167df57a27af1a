// Package testkit holds the harnesses that start real servers for Surge's
// tests and for the local stack (`surge up`, `surge bench`): an embedded
// NATS JetStream server (natsserver, natstest) and clickhouse-server
// processes (chserver, which installs the Debian package where missing).
// They are development tooling: no service imports them.
package testkit
