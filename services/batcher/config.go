package batcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
)

// Config is the batcher's configuration.
type Config struct {
	service.Common `yaml:",inline"`

	// Ownership is the number of shards and how this process finds the
	// ones it batches (shards, ownership, owned_shards, lease_ttl): listed
	// (static, the default; each shard must have exactly one running
	// batcher) or shared with the other batchers by leases (lease).
	shard.Ownership `yaml:",inline"`
	// Policy says when a batch is cut.
	Policy batch.Policy `yaml:"batch" env:"BATCH"`
	// PublishTimeout bounds one attempt to publish a batch, and every
	// other JetStream request of a shard (the read of its last batch, the
	// creation of its events consumer, a purge, a backlog check); attempts
	// are retried, paced by Retry, until one succeeds or the service stops.
	PublishTimeout time.Duration `yaml:"publish_timeout" env:"PUBLISH_TIMEOUT"`
	// StallTimeout is how long a shard with unread events or a batch
	// waiting for its PubAck may go without progress before it counts as
	// stalled: logged, counted, shown on /readyz and its events consumer
	// recreated.
	StallTimeout time.Duration `yaml:"stall_timeout" env:"STALL_TIMEOUT"`
	// Retry paces the retries of a failed publish, of the read of a
	// shard's last batch at start-up and of the re-creation of a shard's
	// events consumer after it stopped.
	Retry retry.Config `yaml:"retry" env:"RETRY"`
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
	// Schema says how properties become typed columns (typed_columns:
	// off, infer, declared) and bounds the columns they may add.
	Schema schema.Config `yaml:"schema" env:"SCHEMA"`
	// Dedup drops copies of an event by (tenant, client event_id) within
	// a window (dedup.go).
	Dedup DedupConfig `yaml:"dedup" env:"DEDUP"`
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		Common:          service.DefaultCommon(":8083"),
		Ownership:       shard.DefaultOwnership(),
		Policy:          batch.DefaultPolicy(),
		PublishTimeout:  10 * time.Second,
		StallTimeout:    30 * time.Second,
		Retry:           retry.DefaultConfig(10 * time.Second),
		ShutdownTimeout: 20 * time.Second,
		MaxLinks:        128,
		PurgeDelay:      streams.DefaultConfig().DuplicateWindow,
		Schema:          schema.DefaultConfig(),
		Dedup:           DefaultDedupConfig(),
	}
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	errs := []error{
		c.Common.Validate(),
		c.Ownership.Validate(),
		config.Section("batch", c.Policy.Validate()),
		config.Section("retry", c.Retry.Validate()),
		c.Schema.Validate(),
		config.Section("dedup", c.Dedup.Validate()),
	}
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.PublishTimeout <= 0 {
		add("publish_timeout must be positive, got %s", c.PublishTimeout)
	}
	if c.StallTimeout <= 0 {
		add("stall_timeout must be positive, got %s", c.StallTimeout)
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
