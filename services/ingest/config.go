package ingest

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/tenants"
)

// Config is everything ingest can be configured with.
type Config struct {
	service.Common `yaml:",inline"`

	// HTTP places and times the public event API.
	HTTP HTTPConfig `yaml:"http" env:"HTTP"`
	// Ingest bounds requests and maps API keys to tenants.
	Ingest Settings `yaml:"ingest" env:"INGEST"`
}

// HTTPConfig places and times the public HTTP server.
type HTTPConfig struct {
	// Addr is the listen address of POST /v1/events.
	Addr string `yaml:"addr" env:"ADDR"`
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout" env:"READ_HEADER_TIMEOUT"`
	// ReadTimeout bounds reading a whole request, body included, so a slow
	// client cannot hold an in-flight slot for long.
	ReadTimeout time.Duration `yaml:"read_timeout" env:"READ_TIMEOUT"`
	// WriteTimeout bounds a request from its headers to the end of the
	// answer; it must leave room for the publish.
	WriteTimeout time.Duration `yaml:"write_timeout" env:"WRITE_TIMEOUT"`
	// IdleTimeout closes idle keep-alive connections.
	IdleTimeout time.Duration `yaml:"idle_timeout" env:"IDLE_TIMEOUT"`
	// ShutdownTimeout is how long in-flight requests may take to finish
	// their publish once shutdown starts.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" env:"SHUTDOWN_TIMEOUT"`
}

// Settings bound what ingest accepts and say who is sending it.
type Settings struct {
	// MaxBodyBytes is the largest request body after decompression.
	MaxBodyBytes int64 `yaml:"max_body_bytes" env:"MAX_BODY_BYTES"`
	// SegmentMaxBodyBytes is the hard ceiling of a Segment batch body
	// after decompression. A batch between MaxBodyBytes and it is read as a
	// stream: its messages over MaxEventBytes are dead-lettered, the others
	// (at most MaxBodyBytes of them) stored, since the SDKs drop a whole
	// batch answered 413 and their size checks let a huge message through.
	SegmentMaxBodyBytes int64 `yaml:"segment_max_body_bytes" env:"SEGMENT_MAX_BODY_BYTES"`
	// MaxEvents is the most events in one request.
	MaxEvents int `yaml:"max_events" env:"MAX_EVENTS"`
	// MaxEventBytes is the largest single event, as sent.
	MaxEventBytes int `yaml:"max_event_bytes" env:"MAX_EVENT_BYTES"`
	// MaxInFlight is how many requests are handled at once; more are
	// rejected with 429 at once rather than queued.
	MaxInFlight int `yaml:"max_in_flight" env:"MAX_IN_FLIGHT"`
	// MaxInFlightPerTenant is how many of those one tenant may hold, so
	// one tenant's burst or slow uploads leave the others slots; 0 is no
	// bound but MaxInFlight.
	MaxInFlightPerTenant int `yaml:"max_in_flight_per_tenant" env:"MAX_IN_FLIGHT_PER_TENANT"`
	// PublishTimeout bounds the wait for JetStream's ack; past it the
	// client gets 503 and retries.
	PublishTimeout time.Duration `yaml:"publish_timeout" env:"PUBLISH_TIMEOUT"`
	// RetryAfter is what 429 and 503 answers ask clients to wait.
	RetryAfter time.Duration `yaml:"retry_after" env:"RETRY_AFTER"`
	// APIKeys maps each API key to its tenant. When empty, authentication
	// is off and every request belongs to DefaultTenant.
	APIKeys map[string]string `yaml:"api_keys" env:"API_KEYS"`
	// DefaultTenant owns the events when APIKeys is empty.
	DefaultTenant string `yaml:"default_tenant" env:"DEFAULT_TENANT"`
	// AdminKey, when set, turns on the operators' erasure route
	// (/v1/admin/erasure, erasure.go), which takes it as a bearer token;
	// it is never a tenant's key.
	AdminKey string `yaml:"admin_key" env:"ADMIN_KEY"`
	// Quota is every tenant's default limits (none by default) until the
	// SURGE_TENANTS bucket says otherwise: `surge tenants set` changes a
	// tenant's or the default's at run time (see docs/tenants.md).
	Quota tenants.Limits `yaml:"quota" env:"QUOTA"`
	// InstanceTTL is how long this instance counts as live without
	// renewing its member key: a tenant's quota is divided over the live
	// instances. An existing lease bucket keeps its own TTL.
	InstanceTTL time.Duration `yaml:"instance_ttl" env:"INSTANCE_TTL"`
}

// DefaultConfig listens on :8080 (admin :8081) with the documented limits.
func DefaultConfig() Config {
	return Config{
		Common: service.DefaultCommon(":8081"),
		HTTP: HTTPConfig{
			Addr:              ":8080",
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      45 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ShutdownTimeout:   15 * time.Second,
		},
		Ingest: Settings{
			// Far above any SDK's batch (Segment's caps one at ~500 KB).
			SegmentMaxBodyBytes: 64 << 20,

			MaxBodyBytes:   4 << 20,
			MaxEvents:      10000,
			MaxEventBytes:  64 << 10,
			MaxInFlight:    256,
			PublishTimeout: 5 * time.Second,
			RetryAfter:     time.Second,
			DefaultTenant:  "default",
			InstanceTTL:    shard.DefaultLeaseTTL,
		},
	}
}

// Validate reports every problem of the configuration, each prefixed by
// its section.
func (c Config) Validate() error {
	errs := []error{
		c.Common.Validate(),
		config.Section("http", c.HTTP.Validate()),
		config.Section("ingest", c.Ingest.Validate()),
	}
	// Checks across sections.
	if c.Ingest.MaxBodyBytes > int64(c.Streams.MaxMsgSize) {
		errs = append(errs, fmt.Errorf("ingest: max_body_bytes %d exceeds streams.max_msg_size %d", c.Ingest.MaxBodyBytes, c.Streams.MaxMsgSize))
	}
	if c.HTTP.WriteTimeout > 0 && c.HTTP.WriteTimeout <= c.Ingest.PublishTimeout {
		errs = append(errs, fmt.Errorf("http: write_timeout %s must exceed ingest.publish_timeout %s", c.HTTP.WriteTimeout, c.Ingest.PublishTimeout))
	}
	return errors.Join(errs...)
}

// Validate reports every problem of the HTTP settings.
func (c HTTPConfig) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("addr: %w", err))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"read_header_timeout", c.ReadHeaderTimeout},
		{"read_timeout", c.ReadTimeout},
		{"write_timeout", c.WriteTimeout},
		{"idle_timeout", c.IdleTimeout},
		{"shutdown_timeout", c.ShutdownTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", d.name, d.v))
		}
	}
	return errors.Join(errs...)
}

// tenantRule says what event.ValidTenant accepts, for the error of a
// tenant it refuses.
const tenantRule = "must be 1 to 64 letters, digits, '_' or '-'"

// Validate reports every problem of the ingest settings.
func (c Settings) Validate() error {
	var errs []error
	if c.MaxBodyBytes < 1<<10 {
		errs = append(errs, fmt.Errorf("max_body_bytes must be at least 1024, got %d", c.MaxBodyBytes))
	}
	if c.SegmentMaxBodyBytes < c.MaxBodyBytes {
		errs = append(errs, fmt.Errorf("segment_max_body_bytes %d is below max_body_bytes %d", c.SegmentMaxBodyBytes, c.MaxBodyBytes))
	}
	if c.MaxEvents < 1 {
		errs = append(errs, fmt.Errorf("max_events must be at least 1, got %d", c.MaxEvents))
	}
	if c.MaxEventBytes < 64 {
		errs = append(errs, fmt.Errorf("max_event_bytes must be at least 64, got %d", c.MaxEventBytes))
	} else if int64(c.MaxEventBytes) > c.MaxBodyBytes && c.MaxBodyBytes > 0 {
		errs = append(errs, fmt.Errorf("max_event_bytes %d exceeds max_body_bytes %d", c.MaxEventBytes, c.MaxBodyBytes))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("max_in_flight must be at least 1, got %d", c.MaxInFlight))
	}
	if c.MaxInFlightPerTenant < 0 || (c.MaxInFlight > 0 && c.MaxInFlightPerTenant > c.MaxInFlight) {
		errs = append(errs, fmt.Errorf("max_in_flight_per_tenant must be 0 to max_in_flight (%d), got %d", c.MaxInFlight, c.MaxInFlightPerTenant))
	}
	if c.PublishTimeout <= 0 {
		errs = append(errs, fmt.Errorf("publish_timeout must be positive, got %s", c.PublishTimeout))
	}
	if c.RetryAfter < time.Second {
		errs = append(errs, fmt.Errorf("retry_after must be at least 1s, got %s", c.RetryAfter))
	}
	if err := c.Quota.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("quota: %w", err))
	}
	if c.InstanceTTL < shard.MinLeaseTTL {
		errs = append(errs, fmt.Errorf("instance_ttl must be at least %s, got %s", shard.MinLeaseTTL, c.InstanceTTL))
	}
	if len(c.APIKeys) == 0 && !event.ValidTenant(c.DefaultTenant) {
		errs = append(errs, fmt.Errorf("default_tenant %q %s", c.DefaultTenant, tenantRule))
	}
	keys := make([]string, 0, len(c.APIKeys))
	for k := range c.APIKeys {
		keys = append(keys, k)
	}
	slices.Sort(keys) // problems in a stable order
	for i, k := range keys {
		// Never print a key: name it by its position.
		if k == "" {
			errs = append(errs, fmt.Errorf("api_keys: key %d is empty", i+1))
		}
		if t := c.APIKeys[k]; !event.ValidTenant(t) {
			errs = append(errs, fmt.Errorf("api_keys: tenant %q of key %d %s", t, i+1, tenantRule))
		}
	}
	errs = append(errs, c.validateAdminKey())
	return errors.Join(errs...)
}
