package service

import (
	"errors"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// Common is the configuration every service shares. Services embed it
// inline, so its keys (nats, streams, log, admin) and variables
// (SURGE_NATS_URL, ...) sit at the top of each service's configuration.
type Common struct {
	NATS    NATSConfig          `yaml:"nats" env:"NATS"`
	Streams streams.Config      `yaml:"streams" env:"STREAMS"`
	Log     telemetry.LogConfig `yaml:"log" env:"LOG"`
	// Admin places /healthz, /readyz and /metrics.
	Admin AdminConfig `yaml:"admin" env:"ADMIN"`
}

// DefaultCommon is the shared defaults, with the service's admin address.
func DefaultCommon(adminAddr string) Common {
	return Common{
		NATS:    DefaultNATSConfig(),
		Streams: streams.DefaultConfig(),
		Log:     telemetry.DefaultLogConfig(),
		Admin:   AdminConfig{Addr: adminAddr},
	}
}

// Logging returns the log settings; it makes every service Config a
// service.Config.
func (c Common) Logging() telemetry.LogConfig { return c.Log }

// Validate reports every problem of the shared sections, each prefixed by
// its section.
func (c Common) Validate() error {
	return errors.Join(
		config.Section("nats", c.NATS.Validate()),
		config.Section("streams", c.Streams.Validate()),
		config.Section("log", c.Log.Validate()),
		config.Section("admin", c.Admin.Validate()),
	)
}
