package schema_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
)

var (
	v1816 = schema.Server{Major: 18, Minor: 16}
	v253  = schema.Server{Major: 25, Minor: 3}
)

func TestParseServer(t *testing.T) {
	tests := []struct {
		version string
		want    schema.Server
	}{
		{"18.16.1", v1816},
		{"25.3.2.39", v253},
		{" 19.1 ", schema.Server{Major: 19, Minor: 1}},
		{"24.8.4.13-lts", schema.Server{Major: 24, Minor: 8}},
	}
	for _, tc := range tests {
		t.Run(tc.version, func(t *testing.T) {
			got, err := schema.ParseServer(tc.version)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	for _, bad := range []string{"", "18", "x.y", "-1.2", "18.x.1"} {
		_, err := schema.ParseServer(bad)
		require.Error(t, err, "%q", bad)
	}
}

func TestServerCapabilities(t *testing.T) {
	type caps struct{ ifNotExists, comments, lowCard, dt64, boolType, legacyAlter bool }
	tests := []struct {
		s    schema.Server
		want caps
		sync string
	}{
		{v1816, caps{legacyAlter: true}, "replication_alter_partitions_sync"},
		{schema.Server{Major: 19, Minor: 1}, caps{ifNotExists: true, comments: true, legacyAlter: true}, "replication_alter_partitions_sync"},
		{schema.Server{Major: 19, Minor: 3}, caps{ifNotExists: true, comments: true, lowCard: true, legacyAlter: true}, "replication_alter_partitions_sync"},
		{schema.Server{Major: 20, Minor: 1}, caps{ifNotExists: true, comments: true, lowCard: true, dt64: true, legacyAlter: true}, "replication_alter_partitions_sync"},
		{schema.Server{Major: 21, Minor: 8}, caps{ifNotExists: true, comments: true, lowCard: true, dt64: true}, "replication_alter_partitions_sync"},
		{schema.Server{Major: 21, Minor: 12}, caps{true, true, true, true, true, false}, "replication_alter_partitions_sync"},
		{v253, caps{true, true, true, true, true, false}, "alter_sync"},
	}
	for _, tc := range tests {
		t.Run(tc.s.String(), func(t *testing.T) {
			got := caps{tc.s.AddColumnIfNotExists(), tc.s.ColumnComments(), tc.s.LowCardinality(),
				tc.s.DateTime64(), tc.s.Bool(), tc.s.ReplicationAlterColumnsTimeout()}
			require.Equal(t, tc.want, got)
			require.Equal(t, tc.sync, tc.s.AlterSyncName())
		})
	}
}

func TestColumnType(t *testing.T) {
	tests := []struct {
		name         string
		kind         batch.Kind
		chType       string
		v1816, v253  string
		declaredKind batch.Kind // of both answers
	}{
		{"string", batch.String, "", "Nullable(String)", "Nullable(String)", batch.String},
		{"int64", batch.Int64, "", "Nullable(Int64)", "Nullable(Int64)", batch.Int64},
		{"float64", batch.Float64, "", "Nullable(Float64)", "Nullable(Float64)", batch.Float64},
		{"bool", batch.Bool, "", "Nullable(UInt8)", "Nullable(Bool)", batch.Bool},
		{"datetime", batch.DateTime, "", "Nullable(DateTime('UTC'))", "Nullable(DateTime64(3, 'UTC'))", batch.DateTime},
		{"array of int64", batch.ArrayOf(batch.Int64), "", "Array(Nullable(Int64))", "Array(Nullable(Int64))", batch.ArrayOf(batch.Int64)},
		{"array of bool", batch.ArrayOf(batch.Bool), "", "Array(Nullable(UInt8))", "Array(Nullable(Bool))", batch.ArrayOf(batch.Bool)},
		{"array of string", batch.ArrayOf(batch.String), "", "Array(Nullable(String))", "Array(Nullable(String))", batch.ArrayOf(batch.String)},
		{"declared low cardinality", batch.String, "LowCardinality(String)", "Nullable(String)", "LowCardinality(Nullable(String))", batch.String},
		{"declared low cardinality nullable", batch.String, "LowCardinality(Nullable(String))", "Nullable(String)", "LowCardinality(Nullable(String))", batch.String},
		{"declared datetime64", batch.DateTime, "DateTime64(3, 'UTC')", "Nullable(DateTime('UTC'))", "Nullable(DateTime64(3, 'UTC'))", batch.DateTime},
		{"declared datetime64 of another zone", batch.DateTime, "DateTime64(6,'Europe/Berlin')", "Nullable(DateTime('Europe/Berlin'))", "Nullable(DateTime64(6, 'Europe/Berlin'))", batch.DateTime},
		{"declared datetime64 without precision", batch.DateTime, "DateTime64", "Nullable(DateTime('UTC'))", "Nullable(DateTime64(3, 'UTC'))", batch.DateTime},
		{"declared datetime", batch.DateTime, "DateTime", "Nullable(DateTime('UTC'))", "Nullable(DateTime('UTC'))", batch.DateTime},
		{"declared bool", batch.Bool, "Bool", "Nullable(UInt8)", "Nullable(Bool)", batch.Bool},
		{"declared uint8 stays uint8", batch.Bool, "UInt8", "Nullable(UInt8)", "Nullable(UInt8)", batch.Bool},
		{"declared nullable int64", batch.Int64, "Nullable(Int64)", "Nullable(Int64)", "Nullable(Int64)", batch.Int64},
		{"declared array of low cardinality", batch.ArrayOf(batch.String), "Array(LowCardinality(String))", "Array(Nullable(String))", "Array(LowCardinality(Nullable(String)))", batch.ArrayOf(batch.String)},
		{"declared type of another kind is ignored", batch.Int64, "String", "Nullable(Int64)", "Nullable(Int64)", batch.Int64},
		{"declared type Surge does not fill is ignored", batch.String, "UUID", "Nullable(String)", "Nullable(String)", batch.String},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				s    schema.Server
				want string
			}{{v1816, tc.v1816}, {v253, tc.v253}} {
				got := schema.ColumnType(tc.kind, tc.chType, c.s)
				require.Equal(t, c.want, got, "on %s", c.s)
				k, err := schema.DeclaredKind(got)
				require.NoError(t, err, "the sink's own types read back")
				require.Equal(t, tc.declaredKind, k)
			}
		})
	}
}

func TestAddColumnsSQL(t *testing.T) {
	cols := []schema.ColumnDef{
		{Name: "p_plan", Type: schema.ColumnType(batch.String, "LowCardinality(String)", v253), Path: "/plan"},
		{Name: "p_ok", Type: schema.ColumnType(batch.Bool, "", v253), Path: "/ok"},
		{Name: "p_at", Type: schema.ColumnType(batch.DateTime, "", v253), Path: "/at"},
		{Name: "p_tags", Type: schema.ColumnType(batch.ArrayOf(batch.String), "", v253), Path: "/tags"},
		{Name: "p_ue3bd2767", Type: schema.ColumnType(batch.Int64, "", v253), Path: "/Странное Имя"},
		{Name: "p_it_s", Type: schema.ColumnType(batch.String, "", v253), Path: `/it's\a~1b`},
	}
	require.Equal(t, "ALTER TABLE surge.events_local"+
		" ADD COLUMN IF NOT EXISTS p_plan LowCardinality(Nullable(String)) COMMENT 'surge:path=/plan',"+
		" ADD COLUMN IF NOT EXISTS p_ok Nullable(Bool) COMMENT 'surge:path=/ok',"+
		" ADD COLUMN IF NOT EXISTS p_at Nullable(DateTime64(3, 'UTC')) COMMENT 'surge:path=/at',"+
		" ADD COLUMN IF NOT EXISTS p_tags Array(Nullable(String)) COMMENT 'surge:path=/tags',"+
		" ADD COLUMN IF NOT EXISTS p_ue3bd2767 Nullable(Int64) COMMENT 'surge:path=/Странное Имя',"+
		` ADD COLUMN IF NOT EXISTS p_it_s Nullable(String) COMMENT 'surge:path=/it\'s\\a~1b'`,
		schema.AddColumnsSQL("surge", "events_local", cols, v253))

	for i := range cols {
		cols[i].Type = schema.ColumnType(batch.String, "", v1816)
	}
	cols[0].Type = schema.ColumnType(batch.String, "LowCardinality(String)", v1816)
	cols[1].Type = schema.ColumnType(batch.Bool, "", v1816)
	cols[2].Type = schema.ColumnType(batch.DateTime, "", v1816)
	cols[3].Type = schema.ColumnType(batch.ArrayOf(batch.String), "", v1816)
	cols[4].Type = schema.ColumnType(batch.Int64, "", v1816)
	// 18.16 knows no IF NOT EXISTS there and drops comments: none of either.
	require.Equal(t, "ALTER TABLE surge.events"+
		" ADD COLUMN p_plan Nullable(String),"+
		" ADD COLUMN p_ok Nullable(UInt8),"+
		" ADD COLUMN p_at Nullable(DateTime('UTC')),"+
		" ADD COLUMN p_tags Array(Nullable(String)),"+
		" ADD COLUMN p_ue3bd2767 Nullable(Int64),"+
		" ADD COLUMN p_it_s Nullable(String)",
		schema.AddColumnsSQL("surge", "events", cols, v1816))
}

func TestAddColumnsSQLBaseColumns(t *testing.T) {
	cols := []schema.ColumnDef{
		{Name: "_conflicts", Type: "String", Default: "''"},
		{Name: "_unpromoted", Type: "Array(String)"},
	}
	require.Equal(t, "ALTER TABLE surge.events_local ADD COLUMN _conflicts String DEFAULT '', ADD COLUMN _unpromoted Array(String)",
		schema.AddColumnsSQL("surge", "events_local", cols, v1816))
	require.Equal(t, "ALTER TABLE surge.events_local ADD COLUMN IF NOT EXISTS _conflicts String DEFAULT '', ADD COLUMN IF NOT EXISTS _unpromoted Array(String)",
		schema.AddColumnsSQL("surge", "events_local", cols, v253))
}

func TestQuoteString(t *testing.T) {
	require.Equal(t, `'plain'`, schema.QuoteString("plain"))
	require.Equal(t, `'a\'b\\c\nd\te\r\0f\x01'`, schema.QuoteString("a'b\\c\nd\te\r\x00f\x01"))
	require.Equal(t, `'Имя'`, schema.QuoteString("Имя"))
}

func TestValidColumn(t *testing.T) {
	for _, ok := range []string{"p_plan", "p_a_b_c", "context_page_url", "p_0"} {
		require.True(t, schema.ValidColumn(ok), ok)
	}
	for _, bad := range []string{"plan", "p_Plan", "p_a-b", "context_", "_conflicts", "p_x; DROP TABLE t", "p_" + string(make([]byte, 70))} {
		require.False(t, schema.ValidColumn(bad), "%q", bad)
	}
}

func TestDeclaredKindLooksThroughWrappers(t *testing.T) {
	for chType, want := range map[string]batch.Kind{
		"LowCardinality(Nullable(String))":        batch.String,
		"Nullable(LowCardinality(String))":        batch.String,
		"Array(LowCardinality(Nullable(String)))": batch.ArrayOf(batch.String),
		"Nullable(DateTime64(3, 'UTC'))":          batch.DateTime,
		"Nullable(Bool)":                          batch.Bool,
	} {
		k, err := schema.DeclaredKind(chType)
		require.NoError(t, err, chType)
		require.Equal(t, want, k, chType)
	}
}

func ExampleAddColumnsSQL() {
	for _, s := range []schema.Server{{Major: 18, Minor: 16}, {Major: 25, Minor: 3}} {
		cols := []schema.ColumnDef{
			{Name: "p_plan", Type: schema.ColumnType(batch.String, "", s), Path: "/plan"},
			{Name: "p_ok", Type: schema.ColumnType(batch.Bool, "", s), Path: "/ok"},
		}
		fmt.Println(schema.AddColumnsSQL("surge", "events_local", cols, s))
	}
	// Output:
	// ALTER TABLE surge.events_local ADD COLUMN p_plan Nullable(String), ADD COLUMN p_ok Nullable(UInt8)
	// ALTER TABLE surge.events_local ADD COLUMN IF NOT EXISTS p_plan Nullable(String) COMMENT 'surge:path=/plan', ADD COLUMN IF NOT EXISTS p_ok Nullable(Bool) COMMENT 'surge:path=/ok'
}
