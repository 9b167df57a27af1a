package batch

// BaseColumn is one column every row of events_local has, whatever its
// properties: declared once here, and the table's DDL, its migrations,
// the sink's insert, the codec and the tools derive from this list.
type BaseColumn struct {
	// Name is the column's name in ClickHouse.
	Name string
	// Type is its ClickHouse type, valid on 18.16 and current releases.
	Type string
	// Default is the DEFAULT expression rows written before the column
	// existed read ("" for none).
	Default string
	// Since is the table version that added the column: 1 for the first
	// table, higher for each migration (the sink adds what a table of a
	// lower version lacks with ALTER TABLE ... ADD COLUMN).
	Since int
	// Values is the column's values for the insert of b, in the form the
	// ClickHouse driver appends; shard is b's shard.
	Values func(b *Batch) any
}

// TableVersion is the version of events_local this code writes: the
// highest Since of BaseColumns.
const TableVersion = 2

// BaseColumns are the base columns in table (and insert) order.
var BaseColumns = []BaseColumn{
	{Name: "event_id", Type: "String", Since: 1, Values: func(b *Batch) any { return b.EventID }},
	{Name: "tenant", Type: "String", Since: 1, Values: func(b *Batch) any { return b.Tenant }},
	{Name: "user_id", Type: "String", Since: 1, Values: func(b *Batch) any { return b.UserID }},
	{Name: "type", Type: "String", Since: 1, Values: func(b *Batch) any { return b.Type }},
	{Name: "ts", Type: "DateTime('UTC')", Since: 1, Values: func(b *Batch) any { return Times(b.TS) }},
	{Name: "received_at", Type: "DateTime('UTC')", Since: 1, Values: func(b *Batch) any { return Times(b.ReceivedAt) }},
	{Name: "properties", Type: "String", Since: 1, Values: func(b *Batch) any { return b.Properties }},
	{Name: "shard", Type: "UInt16", Since: 1, Values: func(b *Batch) any {
		shard := make([]uint16, b.Len())
		for i := range shard {
			shard[i] = uint16(b.Shard)
		}
		return shard
	}},
	{Name: "seq", Type: "UInt64", Since: 1, Values: func(b *Batch) any { return b.Seq }},
	{Name: "_conflicts", Type: "String", Default: "''", Since: 2, Values: func(b *Batch) any {
		if b.Conflicts == nil {
			return make([]string, b.Len())
		}
		return b.Conflicts
	}},
	{Name: "_unpromoted", Type: "Array(String)", Since: 2, Values: func(b *Batch) any {
		if b.Unpromoted == nil {
			return make([][]string, b.Len())
		}
		return b.Unpromoted
	}},
}

// BaseColumnNames are the names of BaseColumns, in order.
func BaseColumnNames() []string {
	out := make([]string, len(BaseColumns))
	for i, c := range BaseColumns {
		out[i] = c.Name
	}
	return out
}

// IsBaseColumn reports whether name is a base column's.
func IsBaseColumn(name string) bool {
	for _, c := range BaseColumns {
		if c.Name == name {
			return true
		}
	}
	return false
}
