package partitioner

import (
	"errors"
	"fmt"
	"time"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/tenants"
)

// Config is the partitioner's configuration.
type Config struct {
	service.Common `yaml:",inline"`

	// Shards is the number of logical shards events are spread over.
	Shards int `yaml:"shards" env:"SHARDS"`
	// Workers is the number of concurrent fetch-publish-ack loops.
	Workers int `yaml:"workers" env:"WORKERS"`
	// FetchBatch is the most INGEST messages one worker fetches at once;
	// their publishes are pipelined before any PubAck is awaited.
	FetchBatch int `yaml:"fetch_batch" env:"FETCH_BATCH"`
	// FetchMaxWait is how long a fetch waits to fill its batch.
	FetchMaxWait time.Duration `yaml:"fetch_max_wait" env:"FETCH_MAX_WAIT"`
	// FetchBatch is also a tenant's turn: the workers take turns round-robin
	// over the tenants with work, each turn at most FetchBatch messages.
	// MaxAckPending bounds the INGEST messages of one tenant handed out
	// and not yet acked, across every partitioner process sharing its
	// consumer.
	MaxAckPending int `yaml:"max_ack_pending" env:"MAX_ACK_PENDING"`
	// AckWait is how long JetStream waits for an ack, or a sign of life,
	// before it hands a message to another worker. It is short, so a
	// crashed or cut-off partitioner's messages are redelivered within
	// seconds; a worker keeps the messages it holds alive with InProgress
	// every AckWait/3 while it waits for its batch to fill and for PubAcks.
	AckWait time.Duration `yaml:"ack_wait" env:"ACK_WAIT"`
	// MaxPublishPending bounds the async publishes awaiting a PubAck; a
	// publish beyond it blocks until one completes.
	MaxPublishPending int `yaml:"max_publish_pending" env:"MAX_PUBLISH_PENDING"`
	// PublishTimeout bounds the wait for one PubAck, for room among the
	// pending async publishes, and for a dead letter's publish. The
	// messages waiting are kept alive meanwhile, so it may exceed AckWait,
	// and it should outlast a NATS cluster election (4-7 s): a PubAck that
	// times out is a NAK and a redelivery.
	PublishTimeout time.Duration `yaml:"publish_timeout" env:"PUBLISH_TIMEOUT"`
	// InfoInterval is how often the consumers' state is read (for the lag
	// metrics and the stall watchdog) and the tenants with work are
	// discovered: the longest a new tenant's first request waits to be
	// found while other tenants keep the workers busy (idle workers ask
	// for discovery at once).
	InfoInterval time.Duration `yaml:"info_interval" env:"INFO_INTERVAL"`
	// TenantIdle is the inactive threshold of a tenant's consumer: the
	// server removes a consumer no partitioner pulled from for this long,
	// so tenants that went quiet leave no consumers behind. A partitioner
	// stops long-polling a tenant TenantIdle/2 after its last message;
	// discovery makes the consumer again when the tenant sends more.
	TenantIdle time.Duration `yaml:"tenant_idle" env:"TENANT_IDLE"`
	// StallTimeout is how long the input may have work pending without a
	// request being settled before it counts as stalled: the stall is
	// logged, counted in surge_partitioner_stalls_total{shard="input"},
	// shown on /readyz and repaired by recreating the consumer.
	StallTimeout time.Duration `yaml:"stall_timeout" env:"STALL_TIMEOUT"`
	// Retry paces the fetches after a failed one (per worker, at most 1s
	// apart) and the redelivery of an INGEST message whose publishes
	// failed: the NAK delay grows with its deliveries.
	Retry retry.Config `yaml:"retry" env:"RETRY"`
	// MaxBatchesBacklog is back-pressure from the sinks: the most batches
	// BATCHES may hold (batches no sink has acked yet) before the
	// partitioner holds back the tenants with a backlog (more than a turn,
	// fetch_batch messages, waiting in INGEST). While BATCHES holds more,
	// a backlog waits in INGEST, where the tenants take turns, instead of
	// queueing in each shard's batcher and sink, and the tenants without
	// one go on at once; a message already fetched is handled to the end.
	// 0 (the default) turns it off: the bound is over all shards, so one
	// shard whose ClickHouse is down would hold back every backlog once
	// its batches fill the bound, and measured end to end the bound did
	// not shorten another tenant's wait behind a backlog, which is the
	// shards' batches already queued and in the insert (docs/tenants.md).
	MaxBatchesBacklog int `yaml:"max_batches_backlog" env:"MAX_BATCHES_BACKLOG"`
	// Producers bounds the JSON messages NATS and MQTT producers publish
	// to surge.in.<tenant>.<anything>, as ingest bounds HTTP requests.
	Producers ProducerLimits `yaml:"producers" env:"PRODUCERS"`
	// Quota is every tenant's default limits until the SURGE_TENANTS
	// bucket says otherwise, as ingest's (the same variables,
	// SURGE_INGEST_QUOTA_*): the partitioner paces each tenant's events
	// to its quota, so a NATS or MQTT producer's backlog, which JetStream
	// acked before any quota applied, reaches the shards at the quota
	// (see docs/tenants.md).
	Quota tenants.Limits `yaml:"quota" env:"INGEST_QUOTA"`
	// InstanceTTL is how long this instance counts as live without
	// renewing its member key: a tenant's quota is divided over the live
	// partitioners. An existing lease bucket keeps its own TTL.
	InstanceTTL time.Duration `yaml:"instance_ttl" env:"INSTANCE_TTL"`
}

// ProducerLimits are the HTTP API's limits, applied to producer messages;
// the stream's max_msg_size bounds a message's bytes.
type ProducerLimits struct {
	// MaxEvents is the most events in one message; a message with more is
	// dead-lettered whole.
	MaxEvents int `yaml:"max_events" env:"MAX_EVENTS"`
	// MaxEventBytes is the largest single event, as sent; a larger one is
	// dead-lettered on its own.
	MaxEventBytes int `yaml:"max_event_bytes" env:"MAX_EVENT_BYTES"`
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		Common:            service.DefaultCommon(":8082"),
		Shards:            8,
		Workers:           2,
		FetchBatch:        256,
		FetchMaxWait:      500 * time.Millisecond,
		MaxAckPending:     1024,
		AckWait:           5 * time.Second,
		MaxPublishPending: 4096,
		PublishTimeout:    10 * time.Second,
		InfoInterval:      2 * time.Second,
		TenantIdle:        time.Minute,
		StallTimeout:      30 * time.Second,
		Retry:             retry.DefaultConfig(30 * time.Second),
		Producers:         ProducerLimits{MaxEvents: 10000, MaxEventBytes: 64 << 10},
		InstanceTTL:       shard.DefaultLeaseTTL,
	}
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	errs := []error{
		c.Common.Validate(),
		config.Section("retry", c.Retry.Validate()),
	}
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Shards < 1 || c.Shards > 65535 {
		add("shards must be 1 to 65535, got %d", c.Shards)
	}
	if c.Workers < 1 {
		add("workers must be at least 1, got %d", c.Workers)
	}
	if c.FetchBatch < 1 {
		add("fetch_batch must be at least 1, got %d", c.FetchBatch)
	}
	if c.FetchMaxWait < time.Millisecond {
		add("fetch_max_wait must be at least 1ms, got %s", c.FetchMaxWait)
	}
	if c.MaxAckPending < c.Workers*c.FetchBatch {
		add("max_ack_pending must be at least workers*fetch_batch (%d), got %d", c.Workers*c.FetchBatch, c.MaxAckPending)
	}
	if c.MaxPublishPending < 1 {
		add("max_publish_pending must be at least 1, got %d", c.MaxPublishPending)
	}
	if c.PublishTimeout <= 0 {
		add("publish_timeout must be positive, got %s", c.PublishTimeout)
	}
	// InProgress goes out every AckWait/3 and must reach the server in time.
	if c.AckWait < minAckWait {
		add("ack_wait must be at least %s, got %s", minAckWait, c.AckWait)
	}
	// A request whose ack was lost, whose holder died or that was naked is
	// republished with the same ids; EVENTS drops the copies only inside
	// its dedup window.
	if c.AckWait >= c.Streams.DuplicateWindow {
		add("ack_wait must be below streams.duplicate_window (%s), got %s", c.Streams.DuplicateWindow, c.AckWait)
	} else if gap := c.republishGap(); gap >= c.Streams.DuplicateWindow {
		add("fetch_max_wait, publish_timeout, ack_wait and retry.max let a request be republished %s after its first publish (2*(fetch_max_wait+2*publish_timeout) + max(ack_wait, longest retry wait)); it must be below streams.duplicate_window (%s)", gap, c.Streams.DuplicateWindow)
	}
	// A worker that waits out its PubAcks makes no progress meanwhile:
	// that is no stall.
	if c.StallTimeout <= c.holdTime() {
		add("stall_timeout must exceed fetch_max_wait+2*publish_timeout (%s), got %s", c.holdTime(), c.StallTimeout)
	}
	// A worker holding a tenant's requests sends InProgress, which keeps
	// the consumer active; the threshold must outlast a hold between them.
	if c.TenantIdle <= c.holdTime() {
		add("tenant_idle must exceed fetch_max_wait+2*publish_timeout (%s), got %s", c.holdTime(), c.TenantIdle)
	}
	if c.MaxBatchesBacklog < 0 {
		add("max_batches_backlog must be 0 (off) or positive, got %d", c.MaxBatchesBacklog)
	}
	if c.Producers.MaxEvents < 1 {
		add("producers: max_events must be at least 1, got %d", c.Producers.MaxEvents)
	}
	if err := c.Quota.Validate(); err != nil {
		add("quota: %w", err)
	}
	if c.InstanceTTL < shard.MinLeaseTTL {
		add("instance_ttl must be at least %s, got %s", shard.MinLeaseTTL, c.InstanceTTL)
	}
	if c.Producers.MaxEventBytes < 64 {
		add("producers: max_event_bytes must be at least 64, got %d", c.Producers.MaxEventBytes)
	}
	// The watchdog sees the backlog only when the consumer is read.
	if c.InfoInterval <= 0 || c.InfoInterval > c.StallTimeout/2 {
		add("info_interval must be positive and at most stall_timeout/2 (%s), got %s", c.StallTimeout/2, c.InfoInterval)
	}
	return errors.Join(errs...)
}

// minAckWait is the shortest ack_wait: the InProgress sent every
// AckWait/3 must cross the network before it expires.
const minAckWait = time.Second

// holdTime is the longest a worker holds a fetched request: its batch
// fills for fetch_max_wait, one publish may wait publish_timeout for room
// (a timeout ends the batch's publishing), and its PubAcks come within
// publish_timeout of the last publish.
func (c Config) holdTime() time.Duration {
	return c.FetchMaxWait + 2*c.PublishTimeout
}

// batchesBound is the most batches BATCHES may hold before the
// partitioner holds back: max_batches_backlog; 0 when back-pressure is
// off.
func (c Config) batchesBound() int { return c.MaxBatchesBacklog }

// republishGap bounds the time between a shard group's first publish and
// its republish by a redelivery: the first holder keeps the request for
// at most holdTime, then the request comes back after AckWait (ack lost,
// holder dead) or its NAK delay, and the next holder republishes it
// within its own holdTime.
func (c Config) republishGap() time.Duration {
	return 2*c.holdTime() + max(c.AckWait, c.Retry.MaxWait())
}
