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
	"time"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// Config is the sink's configuration.
type Config struct {
	NATS       service.NATSConfig  `yaml:"nats" env:"NATS"`
	Streams    streams.Config      `yaml:"streams" env:"STREAMS"`
	ClickHouse ClickHouseConfig    `yaml:"clickhouse" env:"CLICKHOUSE"`
	Retry      RetryConfig         `yaml:"retry" env:"RETRY"`
	Log        telemetry.LogConfig `yaml:"log" env:"LOG"`
	Admin      service.AdminConfig `yaml:"admin" env:"ADMIN"`
	// Shards is the number of logical shards (SURGE_SHARDS).
	Shards int `yaml:"shards" env:"SHARDS"`
	// Owned lists the shards this sink consumes (SURGE_SINK_SHARDS, a comma
	// list); empty means all. To scale out, give each sink its own set:
	// a shard must have one active owner, because the watermark is cached.
	Owned []int `yaml:"owned_shards" env:"SINK_SHARDS"`
}

// ClickHouseConfig says how to reach the shard servers.
type ClickHouseConfig struct {
	// Addrs are the native-protocol addresses (host:port) of the shard
	// servers, in server order (SURGE_CLICKHOUSE_ADDRS, a comma list).
	Addrs []string `yaml:"addrs" env:"ADDRS"`
	// Database holds events_local and events.
	Database string `yaml:"database" env:"DATABASE"`
	// Cluster is the remote_servers cluster the Distributed table spans.
	Cluster string `yaml:"cluster" env:"CLUSTER"`
	// Username and Password authenticate.
	Username string `yaml:"username" env:"USERNAME"`
	Password string `yaml:"password" env:"PASSWORD"`
	// DialTimeout bounds opening a connection.
	DialTimeout time.Duration `yaml:"dial_timeout" env:"DIAL_TIMEOUT"`
	// InsertTimeout bounds one insert (and one watermark read). The BATCHES
	// consumer's AckWait is derived from it (see AckWait).
	InsertTimeout time.Duration `yaml:"insert_timeout" env:"INSERT_TIMEOUT"`
	// ShardServers optionally maps shard k to server ShardServers[k] (an
	// index into Addrs); empty means k mod len(Addrs).
	ShardServers []int `yaml:"shard_servers" env:"SHARD_SERVERS"`
}

// RetryConfig is the exponential backoff of transient failures.
type RetryConfig struct {
	// Initial is the first wait; each retry doubles it up to Max.
	Initial time.Duration `yaml:"initial" env:"INITIAL"`
	Max     time.Duration `yaml:"max" env:"MAX"`
}

// DefaultConfig is a sink for a local stack: one ClickHouse server, eight
// shards, all owned.
func DefaultConfig() Config {
	return Config{
		NATS:    service.DefaultNATSConfig(),
		Streams: streams.DefaultConfig(),
		ClickHouse: ClickHouseConfig{
			Addrs:         []string{"127.0.0.1:9000"},
			Database:      "surge",
			Cluster:       "events_cluster",
			Username:      "default",
			DialTimeout:   5 * time.Second,
			InsertTimeout: 30 * time.Second,
		},
		Retry:  RetryConfig{Initial: 100 * time.Millisecond, Max: 5 * time.Second},
		Log:    telemetry.DefaultLogConfig(),
		Admin:  service.AdminConfig{Addr: ":8084"},
		Shards: 8,
	}
}

// Logging returns the log settings.
func (c Config) Logging() telemetry.LogConfig { return c.Log }

// Validate reports every problem at once, each prefixed by its section.
func (c Config) Validate() error {
	errs := []error{
		config.Section("nats", c.NATS.Validate()),
		config.Section("streams", c.Streams.Validate()),
		config.Section("clickhouse", c.ClickHouse.validate(c.Shards)),
		config.Section("retry", c.Retry.validate(c.ClickHouse.InsertTimeout)),
		config.Section("log", c.Log.Validate()),
		config.Section("admin", c.Admin.Validate()),
	}
	if c.Shards < 1 || c.Shards > 65535 {
		errs = append(errs, fmt.Errorf("shards must be 1 to 65535 (the shard column is UInt16), got %d", c.Shards))
	}
	seen := map[int]bool{}
	for _, k := range c.Owned {
		switch {
		case k < 0 || k >= c.Shards:
			errs = append(errs, fmt.Errorf("owned_shards: shard %d is not in [0, %d)", k, c.Shards))
		case seen[k]:
			errs = append(errs, fmt.Errorf("owned_shards: shard %d is listed twice", k))
		}
		seen[k] = true
	}
	return errors.Join(errs...)
}

// identifier is what may be put into DDL unquoted on every ClickHouse.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (c ClickHouseConfig) validate(shards int) error {
	var errs []error
	if len(c.Addrs) == 0 {
		errs = append(errs, errors.New("addrs: at least one address is required"))
	}
	for _, a := range c.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("addrs: %q: want host:port", a))
		}
	}
	if !identifier.MatchString(c.Database) {
		errs = append(errs, fmt.Errorf("database must be an identifier, got %q", c.Database))
	}
	if !identifier.MatchString(c.Cluster) {
		errs = append(errs, fmt.Errorf("cluster must be an identifier, got %q", c.Cluster))
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

func (c RetryConfig) validate(insertTimeout time.Duration) error {
	var errs []error
	if c.Initial <= 0 {
		errs = append(errs, fmt.Errorf("initial must be positive, got %s", c.Initial))
	}
	if c.Max < c.Initial {
		errs = append(errs, fmt.Errorf("max must be at least initial (%s), got %s", c.Initial, c.Max))
	}
	// A wait between retries must not outlive the ack wait, or the batch
	// would be redelivered while its owner still holds it.
	if c.Max > insertTimeout {
		errs = append(errs, fmt.Errorf("max must not exceed clickhouse insert_timeout (%s), got %s", insertTimeout, c.Max))
	}
	return errors.Join(errs...)
}

// ServerOf is the index in Addrs of the server that owns shard k.
func (c Config) ServerOf(k int) int {
	if len(c.ClickHouse.ShardServers) > 0 {
		return c.ClickHouse.ShardServers[k]
	}
	return k % len(c.ClickHouse.Addrs)
}

// OwnedShards is the shards this sink consumes, in order.
func (c Config) OwnedShards() []int {
	if len(c.Owned) > 0 {
		return c.Owned
	}
	out := make([]int, c.Shards)
	for k := range out {
		out[k] = k
	}
	return out
}

// AckWait is the BATCHES consumer's ack wait: longer than one insert or
// watermark read plus one backoff wait, the longest the sink goes without
// an ack or an InProgress.
func (c Config) AckWait() time.Duration {
	return 2*c.ClickHouse.InsertTimeout + c.Retry.Max
}
