package schema

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Config is the schema section of the batcher's and the sink's
// configuration (schema: in YAML, SURGE_SCHEMA_* in the environment).
type Config struct {
	// Mode is off, infer or declared (typed_columns).
	Mode Mode `yaml:"typed_columns" env:"TYPED_COLUMNS"`
	// Table names the table's key in the bucket (table.<Table>).
	Table string `yaml:"table" env:"TABLE"`
	// MaxColumns caps the typed columns of the table (hard max 1,000).
	MaxColumns int `yaml:"max_columns" env:"MAX_COLUMNS"`
	// MaxColumnsPerTenant caps the columns one tenant's events introduce.
	MaxColumnsPerTenant int `yaml:"max_columns_per_tenant" env:"MAX_COLUMNS_PER_TENANT"`
	// MaxNewColumnsPerHour caps the columns added in an hour.
	MaxNewColumnsPerHour int `yaml:"max_new_columns_per_hour" env:"MAX_NEW_COLUMNS_PER_HOUR"`
	// MaxKeysPerEvent caps the flattened keys of one event considered;
	// the rest are unpromoted.
	MaxKeysPerEvent int `yaml:"max_keys_per_event" env:"MAX_KEYS_PER_EVENT"`
	// MaxDepth is how deep objects are flattened; an object at this depth
	// is kept as its JSON text in one string column.
	MaxDepth int `yaml:"max_depth" env:"MAX_DEPTH"`
	// DenyKeys are regular expressions: a key (one path segment) matching
	// one is never promoted (ids used as keys).
	DenyKeys []string `yaml:"deny_keys" env:"DENY_KEYS"`
	// Ignore are JSON Pointers of properties never promoted nor listed.
	Ignore []string `yaml:"ignore" env:"IGNORE"`
	// Columns are the declared columns by JSON Pointer.
	Columns map[string]DeclaredColumn `yaml:"columns"`
	// File is a YAML file holding more of this section (columns, ignore,
	// deny_keys...); its settings apply over the ones here.
	File string `yaml:"file" env:"FILE"`
}

// DeclaredColumn is an operator's column: its ClickHouse type (as on
// current ClickHouse: String, Int64, Float64, Bool, LowCardinality(String),
// DateTime, DateTime64(3, 'UTC'), Array(T)...), and optionally its name.
type DeclaredColumn struct {
	Type string `yaml:"type"`
	Name string `yaml:"name"`
}

// HardMaxColumns is the most typed columns a table may have: on 18.16 a
// table of 1,000 mostly-NULL Nullable columns inserts 18x slower than one
// of 20.
const HardMaxColumns = 1000

// MaxNameLen is the longest column name, in bytes (ASCII only): far under
// 18.16's file-name limit, which a longer name passes for every later
// insert of the table.
const MaxNameLen = 64

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Mode:                 Infer,
		Table:                "events",
		MaxColumns:           200,
		MaxColumnsPerTenant:  100,
		MaxNewColumnsPerHour: 50,
		MaxKeysPerEvent:      500,
		MaxDepth:             3,
		DenyKeys: []string{
			`^[0-9]+$`, // numbers
			`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`, // UUIDs
			`^[0-9a-fA-F]{16,}$`, // hex ids
			`@`,                  // e-mail addresses
		},
	}
}

var tableName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Load applies File, when set, over c.
func (c *Config) Load() error {
	if c.File == "" {
		return nil
	}
	data, err := os.ReadFile(c.File)
	if err != nil {
		return fmt.Errorf("read schema file: %w", err)
	}
	var f Config
	if err := yaml.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("parse schema file %s: %w", c.File, err)
	}
	if f.Mode != "" {
		c.Mode = f.Mode
	}
	for _, n := range []struct{ from, to *int }{
		{&f.MaxColumns, &c.MaxColumns}, {&f.MaxColumnsPerTenant, &c.MaxColumnsPerTenant},
		{&f.MaxNewColumnsPerHour, &c.MaxNewColumnsPerHour}, {&f.MaxKeysPerEvent, &c.MaxKeysPerEvent},
		{&f.MaxDepth, &c.MaxDepth},
	} {
		if *n.from != 0 {
			*n.to = *n.from
		}
	}
	if f.DenyKeys != nil {
		c.DenyKeys = f.DenyKeys
	}
	c.Ignore = append(c.Ignore, f.Ignore...)
	if len(f.Columns) > 0 && c.Columns == nil {
		c.Columns = make(map[string]DeclaredColumn)
	}
	for p, d := range f.Columns {
		c.Columns[p] = d
	}
	return nil
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	var errs []error
	switch c.Mode {
	case Off, Infer, Declared:
	default:
		errs = append(errs, fmt.Errorf("schema.typed_columns: %q is not off, infer or declared", c.Mode))
	}
	if !tableName.MatchString(c.Table) {
		errs = append(errs, fmt.Errorf("schema.table: %q must be letters, digits, _ or -", c.Table))
	}
	if c.MaxColumns < 0 || c.MaxColumns > HardMaxColumns {
		errs = append(errs, fmt.Errorf("schema.max_columns: %d is not within 0..%d", c.MaxColumns, HardMaxColumns))
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"max_columns_per_tenant", c.MaxColumnsPerTenant}, {"max_new_columns_per_hour", c.MaxNewColumnsPerHour},
		{"max_keys_per_event", c.MaxKeysPerEvent}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("schema.%s: %d is negative", n.name, n.v))
		}
	}
	if c.MaxDepth < 1 || c.MaxDepth > 10 {
		errs = append(errs, fmt.Errorf("schema.max_depth: %d is not within 1..10", c.MaxDepth))
	}
	for _, d := range c.DenyKeys {
		if _, err := regexp.Compile(d); err != nil {
			errs = append(errs, fmt.Errorf("schema.deny_keys: %q: %w", d, err))
		}
	}
	for _, p := range c.Ignore {
		if !strings.HasPrefix(p, "/") {
			errs = append(errs, fmt.Errorf("schema.ignore: %q is not a JSON Pointer (it starts with /)", p))
		}
	}
	for p, d := range c.Columns {
		if !strings.HasPrefix(p, "/") {
			errs = append(errs, fmt.Errorf("schema.columns: %q is not a JSON Pointer (it starts with /)", p))
		}
		if _, err := DeclaredKind(d.Type); err != nil {
			errs = append(errs, fmt.Errorf("schema.columns[%s].type: %w", p, err))
		}
		if d.Name != "" && !ValidName(d.Name) {
			errs = append(errs, fmt.Errorf("schema.columns[%s].name: %q must start with p_ and hold only a-z, 0-9 and _, at most %d bytes", p, d.Name, MaxNameLen))
		}
	}
	return errors.Join(errs...)
}
