// Package sink consumes each owned shard's batches from the BATCHES stream
// in order and bulk-inserts every batch as one block into the ClickHouse
// server that owns the shard, then acks it. The highest EVENTS sequence
// inserted per shard (the watermark) is read back from ClickHouse, so a
// redelivered batch never lands twice.
package sink

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
)

// Config is the sink's configuration.
type Config struct {
	service.Common `yaml:",inline"`

	ClickHouse ClickHouseConfig `yaml:"clickhouse" env:"CLICKHOUSE"`
	// Retry paces the retries of schema creation, fetches, inserts and
	// dead-letter publishes.
	Retry retry.Config `yaml:"retry" env:"RETRY"`
	// AckWait is the BATCHES consumers' ack wait: how long a batch fetched
	// by a sink that died (or lost its connection) stays locked before
	// JetStream hands it out again. While a sink works on a batch (watermark
	// read, insert, retries, dead-letter publish) it tells JetStream so every
	// AckWait/3, however long that takes; so AckWait only bounds how soon a
	// shard resumes after a crash, and can be short.
	AckWait time.Duration `yaml:"ack_wait" env:"ACK_WAIT"`
	// StallTimeout is how long a shard may have batches waiting and land
	// none before the sink logs it, counts it in surge_sink_stalls_total,
	// turns /readyz not ready and recreates the shard's consumer.
	StallTimeout time.Duration `yaml:"stall_timeout" env:"STALL_TIMEOUT"`
	// ShutdownTimeout bounds how long the batch in hand is worked on once
	// its shard stops (shutdown, or a lease handed over): past it the insert
	// under way is cut and the batch goes back, unacked, to the next owner,
	// which asks ClickHouse what landed. A graceful stop thus hands a shard
	// over no later than a crash would (the lease TTL).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" env:"SHUTDOWN_TIMEOUT"`
	// Ownership is the number of shards and how this process finds the
	// ones it consumes (shards, ownership, owned_shards, lease_ttl): listed
	// (static, the default; each shard must have exactly one running sink,
	// because the watermark is cached) or shared with the other sinks by
	// leases (lease).
	shard.Ownership `yaml:",inline"`
	// Schema is the typed columns' section, shared with the batcher: the
	// sink creates the declared columns, keeps every agreed column present
	// on every server (the reconciler) and adopts a type an operator set.
	Schema schema.Config `yaml:"schema" env:"SCHEMA"`
	// Erasure is the eraser, which carries out erasure requests (see
	// erasure.go and docs/erasure.md).
	Erasure ErasureConfig `yaml:"erasure" env:"ERASURE"`
}

// ClickHouseConfig says how to reach the shard servers.
type ClickHouseConfig struct {
	// Addrs are the native-protocol addresses (host:port) of the shard
	// servers, one entry per ClickHouse shard, in server order
	// (SURGE_CLICKHOUSE_ADDRS, a comma list). An entry may list the
	// replicas of its shard joined by "|" ("ch-0a:9000|ch-0b:9000"): the
	// sink writes to one replica at a time, the first at start, and moves
	// to the next when an attempt on it fails. Replicas need Replicated.
	Addrs []string `yaml:"addrs" env:"ADDRS"`
	// Replicated says the shards are ReplicatedMergeTree replicas
	// coordinated by ZooKeeper (SURGE_CLICKHOUSE_REPLICATED): the schema is
	// created `ON CLUSTER` with ReplicatedReplacingMergeTree and the
	// Distributed table relies on internal replication; inserts use block
	// deduplication, so a retried batch lands once whichever replica takes
	// it. Every server must have the zookeeper, macros {shard} and
	// {replica}, and the Cluster in remote_servers.
	Replicated bool `yaml:"replicated" env:"REPLICATED"`
	// Database holds events_local and events.
	Database string `yaml:"database" env:"DATABASE"`
	// Cluster is the remote_servers cluster the Distributed table spans.
	Cluster string `yaml:"cluster" env:"CLUSTER"`
	// Username and Password authenticate.
	Username string `yaml:"username" env:"USERNAME"`
	Password string `yaml:"password" env:"PASSWORD"`
	// DialTimeout bounds opening a connection.
	DialTimeout time.Duration `yaml:"dial_timeout" env:"DIAL_TIMEOUT"`
	// InsertTimeout bounds one insert, watermark read, presence check or
	// schema statement.
	InsertTimeout time.Duration `yaml:"insert_timeout" env:"INSERT_TIMEOUT"`
	// ShardServers optionally maps shard k to server ShardServers[k] (an
	// index into Addrs); empty means k mod len(Addrs).
	ShardServers []int `yaml:"shard_servers" env:"SHARD_SERVERS"`
	// MaxInserts is the most inserts this process runs at once on one
	// shard server (all its replicas together), counting the reads of
	// which rows the server holds (a shard's first at each tenure); the
	// shards it owns there take turns. A shard whose insert waits for its
	// turn is busy to its batcher, whose batches then grow (batch.Policy's
	// MinAge), as they do when the server itself is slow: fewer, larger
	// parts under load.
	MaxInserts int `yaml:"max_inserts" env:"MAX_INSERTS"`
}

// DefaultConfig is a sink for a local stack: one ClickHouse server, eight
// shards, all owned.
func DefaultConfig() Config {
	return Config{
		Common: service.DefaultCommon(":8084"),
		ClickHouse: ClickHouseConfig{
			Addrs:         []string{"127.0.0.1:9000"},
			Database:      "surge",
			Cluster:       "events_cluster",
			Username:      "default",
			DialTimeout:   5 * time.Second,
			InsertTimeout: 30 * time.Second,
			MaxInserts:    4,
		},
		Retry:           retry.DefaultConfig(5 * time.Second),
		AckWait:         5 * time.Second,
		StallTimeout:    30 * time.Second,
		ShutdownTimeout: 10 * time.Second,
		Ownership:       shard.DefaultOwnership(),
		Schema:          schema.DefaultConfig(),
		Erasure:         DefaultErasureConfig(),
	}
}

// Validate reports every problem at once, each prefixed by its section.
func (c Config) Validate() error {
	errs := []error{
		c.Common.Validate(),
		config.Section("clickhouse", c.ClickHouse.validate(c.Shards)),
		config.Section("retry", c.Retry.Validate()),
		c.validateLiveness(),
		c.Ownership.Validate(),
		c.Schema.Validate(),
		config.Section("erasure", c.Erasure.validate()),
	}
	return errors.Join(errs...)
}

// MinAckWait is the shortest ack_wait: the keepalive runs every third of
// it, so a batch is handed out again only after two keepalives in a row
// went missing, and at 1s that margin still covers a GC pause or a slow
// flush of the connection.
const MinAckWait = time.Second

func (c Config) validateLiveness() error {
	var errs []error
	if c.AckWait < MinAckWait {
		errs = append(errs, fmt.Errorf("ack_wait must be at least %s (the keepalive runs every ack_wait/3), got %s", MinAckWait, c.AckWait))
	}
	if c.StallTimeout <= 0 {
		errs = append(errs, fmt.Errorf("stall_timeout must be positive, got %s", c.StallTimeout))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("shutdown_timeout must be positive, got %s", c.ShutdownTimeout))
	}
	return errors.Join(errs...)
}

// identifier is what may be put into DDL unquoted on every ClickHouse.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// inserts is MaxInserts, at least 1 in a config that skipped Validate.
func (c ClickHouseConfig) inserts() int { return max(c.MaxInserts, 1) }

func (c ClickHouseConfig) validate(shards int) error {
	var errs []error
	if len(c.Addrs) == 0 {
		errs = append(errs, errors.New("addrs: at least one address is required"))
	}
	for _, a := range c.Addrs {
		replicas := Replicas(a)
		if len(replicas) == 1 {
			if _, _, err := net.SplitHostPort(a); err != nil {
				errs = append(errs, fmt.Errorf("addrs: %q: want host:port", a))
			}
			continue
		}
		for _, r := range replicas {
			if _, _, err := net.SplitHostPort(r); err != nil {
				errs = append(errs, fmt.Errorf("addrs: %q: replica %q: want host:port", a, r))
			}
		}
		if !c.Replicated {
			errs = append(errs, fmt.Errorf("addrs: %q lists replicas: set replicated: true (SURGE_CLICKHOUSE_REPLICATED), or each would hold different rows", a))
		}
	}
	if !identifier.MatchString(c.Database) {
		errs = append(errs, fmt.Errorf("database must be an identifier, got %q", c.Database))
	}
	if !identifier.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("cluster must be an identifier, got %q", c.Cluster))
	}
	if c.MaxInserts < 1 {
		errs = append(errs, fmt.Errorf("max_inserts must be at least 1, got %d", c.MaxInserts))
	}
	if c.DialTimeout <= 0 {
		errs = append(errs, fmt.Errorf("dial_timeout must be positive, got %s", c.DialTimeout))
	}
	if c.InsertTimeout < time.Second {
		errs = append(errs, fmt.Errorf("insert_timeout must be at least 1s, got %s", c.InsertTimeout))
	}
	if len(c.ShardServers) > 0 {
		if len(c.ShardServers) != shards {
			errs = append(errs, fmt.Errorf("shard_servers must name a server for each of the %d shards, got %d", shards, len(c.ShardServers)))
		}
		for k, i := range c.ShardServers {
			if i < 0 || i >= len(c.Addrs) {
				errs = append(errs, fmt.Errorf("shard_servers: shard %d maps to server %d, not in [0, %d)", k, i, len(c.Addrs)))
			}
		}
	}
	return errors.Join(errs...)
}

// ReplicaSeparator joins the replicas of one ClickHouse shard in an Addrs
// entry.
const ReplicaSeparator = "|"

// Replicas splits an Addrs entry into the addresses of its replicas.
func Replicas(entry string) []string {
	parts := strings.Split(entry, ReplicaSeparator)
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
	}
	return parts
}

// ServerOf is the index in Addrs of the server that owns shard k.
func (c Config) ServerOf(k int) int {
	if len(c.ClickHouse.ShardServers) > 0 {
		return c.ClickHouse.ShardServers[k]
	}
	return k % len(c.ClickHouse.Addrs)
}

// KeepaliveEvery is how often a shard loop tells JetStream it still works
// on the batch in hand (InProgress), which restarts the batch's AckWait.
func (c Config) KeepaliveEvery() time.Duration { return c.AckWait / 3 }

// ConsumerConfig is the durable BATCHES consumer of shard k.
func (c Config) ConsumerConfig(k int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(k),
		Description:   "Surge sink of shard " + strconv.Itoa(k),
		FilterSubject: streams.BatchesSubject(k),
		AckPolicy:     jetstream.AckExplicitPolicy,
		// One batch in flight keeps the shard's inserts in sequence order,
		// which the watermark relies on.
		MaxAckPending: 1,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
	}
}
