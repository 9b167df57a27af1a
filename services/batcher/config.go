package batcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// Config is the batcher's configuration.
type Config struct {
	NATS    service.NATSConfig  `yaml:"nats" env:"NATS"`
	Streams streams.Config      `yaml:"streams" env:"STREAMS"`
	Log     telemetry.LogConfig `yaml:"log" env:"LOG"`
	Admin   service.AdminConfig `yaml:"admin" env:"ADMIN"`

	// Shards is the number of logical shards.
	Shards int `yaml:"shards" env:"SHARDS"`
	// Owned lists the shards this process batches; empty means all. Each
	// shard must have exactly one running owner.
	Owned []int `yaml:"owned" env:"BATCHER_SHARDS"`
	// Policy says when a batch is cut.
	Policy batch.Policy `yaml:"batch" env:"BATCH"`
	// PublishTimeout bounds one attempt to publish a batch; attempts are
	// retried with backoff until one succeeds or the service stops.
	PublishTimeout time.Duration `yaml:"publish_timeout" env:"PUBLISH_TIMEOUT"`
	// ShutdownTimeout bounds the final flush of each shard at shutdown.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" env:"SHUTDOWN_TIMEOUT"`
	// MaxLinks caps the span links of a batch span to the spans of the
	// messages it holds.
	MaxLinks int `yaml:"max_links" env:"MAX_LINKS"`
	// PurgeDelay is how long EVENTS keeps a message after its batch is
	// published. JetStream rebuilds its duplicate map after a restart only
	// from the messages still stored, so a delay of at least
	// streams.duplicate_window keeps the partitioner's republished groups
	// recognised as duplicates across a NATS restart.
	PurgeDelay time.Duration `yaml:"purge_delay" env:"PURGE_DELAY"`
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		NATS:            service.DefaultNATSConfig(),
		Streams:         streams.DefaultConfig(),
		Log:             telemetry.DefaultLogConfig(),
		Admin:           service.AdminConfig{Addr: ":8083"},
		Shards:          8,
		Policy:          batch.DefaultPolicy(),
		PublishTimeout:  10 * time.Second,
		ShutdownTimeout: 20 * time.Second,
		MaxLinks:        128,
		PurgeDelay:      streams.DefaultConfig().DuplicateWindow,
	}
}

// Logging returns the log settings.
func (c Config) Logging() telemetry.LogConfig { return c.Log }

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	errs := []error{
		config.Section("nats", c.NATS.Validate()),
		config.Section("streams", c.Streams.Validate()),
		config.Section("log", c.Log.Validate()),
		config.Section("admin", c.Admin.Validate()),
		config.Section("batch", c.Policy.Validate()),
	}
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Shards < 1 || c.Shards > 65535 {
		add("shards must be 1 to 65535, got %d", c.Shards)
	}
	seen := make(map[int]bool)
	for _, k := range c.Owned {
		if k < 0 || k >= c.Shards {
			add("owned: shard %d is outside [0, %d)", k, c.Shards)
		}
		if seen[k] {
			add("owned: shard %d is listed twice", k)
		}
		seen[k] = true
	}
	if c.PublishTimeout <= 0 {
		add("publish_timeout must be positive, got %s", c.PublishTimeout)
	}
	if c.ShutdownTimeout <= 0 {
		add("shutdown_timeout must be positive, got %s", c.ShutdownTimeout)
	}
	if c.PurgeDelay < 0 {
		add("purge_delay must not be negative, got %s", c.PurgeDelay)
	}
	if c.MaxLinks < 0 {
		add("max_links must not be negative, got %d", c.MaxLinks)
	}
	return errors.Join(errs...)
}

// OwnedShards is the list of shards to batch: Owned, or all of them.
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
