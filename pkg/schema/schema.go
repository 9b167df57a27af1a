// Package schema projects event properties into typed columns: it
// flattens each event's properties, infers a type for each key, agrees
// with every other instance on one schema per table (a document in the
// JetStream key-value bucket SURGE_SCHEMA, changed by compare-and-swap),
// and fills a batch's typed columns, _conflicts and _unpromoted from it.
// It also maps the logical types to ClickHouse DDL per server version.
//
// The rules (flattening, naming, inference, widening, lossless coercion,
// limits) are in docs/TYPED-COLUMNS.md.
package schema

import (
	"time"

	"github.com/surge-events/surge/pkg/batch"
)

// Mode says what the batcher does with properties.
type Mode string

const (
	// Off projects nothing: rows carry properties only.
	Off Mode = "off"
	// Infer promotes keys to columns by the types of their values.
	Infer Mode = "infer"
	// Declared promotes only the keys the schema declares.
	Declared Mode = "declared"
)

// Origin says how a column came into the schema.
type Origin string

const (
	// Inferred: a batcher saw the key and proposed the column.
	Inferred Origin = "inferred"
	// DeclaredOrigin: the operator's schema declares the column.
	DeclaredOrigin Origin = "declared"
	// Adopted: an operator changed the column's type in ClickHouse, and
	// the schema took it over.
	Adopted Origin = "adopted"
)

// Format is the version of the schema document's layout.
const Format = 1

// Doc is the agreed schema of one table: the value of its key in the
// bucket. Every field is deterministic JSON (maps are written sorted), so
// two instances that agree write the same bytes.
type Doc struct {
	Format int `json:"format"`
	// Columns are the typed columns by name.
	Columns map[string]*Col `json:"columns"`
	// Failed are columns whose DDL failed for good, by name, with the
	// error: batchers stop filling them.
	Failed map[string]string `json:"failed,omitempty"`
	// Rate counts the columns added in the current hour.
	Rate Rate `json:"rate"`
}

// Col is one agreed column.
type Col struct {
	// Path is the property's JSON Pointer (RFC 6901): "/a.b" is the key
	// "a.b", "/a/b" the key "b" inside "a".
	Path string `json:"path"`
	// Type is the column's logical kind (batch.Kind.String()).
	Type string `json:"type"`
	// CHType is the ClickHouse type when it is not the kind's default: a
	// declared one (LowCardinality(String), DateTime64(3, 'UTC')) or one an
	// operator set by hand and the reconciler adopted.
	CHType string `json:"ch_type,omitempty"`
	Origin Origin `json:"origin"`
	// Tenant is the tenant whose event introduced the column ("" for
	// declared ones): the per-tenant column limit counts by it.
	Tenant string    `json:"tenant,omitempty"`
	Added  time.Time `json:"added"`
}

// Kind is the column's logical kind; 0 when Type is not one.
func (c *Col) Kind() batch.Kind {
	k, err := batch.ParseKind(c.Type)
	if err != nil {
		return 0
	}
	return k
}

// Rate is the count of columns added since WindowStart; a window lasts an
// hour.
type Rate struct {
	WindowStart time.Time `json:"window_start"`
	Added       int       `json:"added"`
}
