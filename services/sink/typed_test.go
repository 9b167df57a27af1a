package sink

import (
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
)

func ptr[T any](v T) *T { return &v }

func TestParseColumnType(t *testing.T) {
	tests := []struct {
		in   string
		want columnType
		ok   bool
	}{
		{"Nullable(Int64)", columnType{base: "Int64", nullable: true}, true},
		{"Int64", columnType{base: "Int64"}, true},
		{"Nullable(UInt8)", columnType{base: "UInt8", nullable: true}, true},
		{"Nullable(Bool)", columnType{base: "Bool", nullable: true}, true},
		{"LowCardinality(Nullable(String))", columnType{base: "String", nullable: true, lowCard: true}, true},
		{"LowCardinality(String)", columnType{base: "String", lowCard: true}, true},
		{"Nullable(DateTime('UTC'))", columnType{base: "DateTime", nullable: true}, true},
		{"DateTime", columnType{base: "DateTime"}, true},
		{"Nullable(DateTime64(3, 'UTC'))", columnType{base: "DateTime64", precision: 3, nullable: true}, true},
		{"DateTime64(6)", columnType{base: "DateTime64", precision: 6}, true},
		{"Array(Nullable(Float64))", columnType{base: "Float64", nullable: true, array: true}, true},
		{"Array(String)", columnType{base: "String", array: true}, true},
		{"Array(LowCardinality(Nullable(String)))", columnType{base: "String", nullable: true, lowCard: true, array: true}, true},
		{"UUID", columnType{}, false},
		{"Nullable(Decimal(18, 4))", columnType{}, false},
		{"LowCardinality(Int64)", columnType{}, false},
		{"Array(Array(Int64))", columnType{}, false},
		{"", columnType{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := parseColumnType(tc.in)
			require.Equal(t, tc.ok, ok)
			if ok {
				require.Equal(t, tc.want, got)
			}
		})
	}
}

// typedBatch is a projected batch of rows rows with properties props and
// the typed columns cols.
func typedBatch(props []string, cols ...batch.Column) *batch.Batch {
	b := &batch.Batch{Properties: props, Typed: cols}
	for i := range props {
		b.EventID = append(b.EventID, "e"+string(rune('0'+i)))
		b.Seq = append(b.Seq, uint64(i+1))
	}
	b.Conflicts = make([]string, len(props))
	b.Unpromoted = make([][]string, len(props))
	return b
}

// noPath is a registry that knows no column.
func noPath(string) string { return "" }

func TestConvertTypedDefaultTypes(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123_000_000, time.UTC)
	b := typedBatch([]string{`{}`, `{}`, `{}`},
		batch.Column{Name: "p_ok", Kind: batch.Bool, Null: []bool{false, true, false}, Ints: []int64{1, 0, 0}},
		batch.Column{Name: "p_n", Kind: batch.Int64, Null: []bool{false, false, true}, Ints: []int64{-3, 1 << 62, 0}},
		batch.Column{Name: "p_f", Kind: batch.Float64, Null: []bool{true, false, false}, Floats: []float64{0, 2.5, -1e300}},
		batch.Column{Name: "p_s", Kind: batch.String, Null: []bool{false, false, true}, Strs: []string{"", "é\"x", ""}},
		batch.Column{Name: "p_at", Kind: batch.DateTime, Null: []bool{false, true, true}, Ints: []int64{at.UnixMicro(), 0, 0}},
		batch.Column{Name: "p_tags", Kind: batch.ArrayOf(batch.String), Lens: []uint32{2, 0, 1},
			ElemNull: []bool{false, true, false}, Strs: []string{"a", "", "b"}},
		batch.Column{Name: "p_nums", Kind: batch.ArrayOf(batch.Int64), Lens: []uint32{0, 3, 0},
			ElemNull: []bool{false, true, false}, Ints: []int64{1, 0, 3}},
	)
	types := map[string]string{
		"p_ok": "Nullable(UInt8)", "p_n": "Nullable(Int64)", "p_f": "Nullable(Float64)", "p_s": "Nullable(String)",
		"p_at": "Nullable(DateTime64(3, 'UTC'))", "p_tags": "Array(Nullable(String))", "p_nums": "Array(Nullable(Int64))",
	}
	got, conflicts := convertTyped(b, types, noPath)
	require.Equal(t, []typedInsert{
		{"p_ok", []*uint8{ptr[uint8](1), nil, ptr[uint8](0)}},
		{"p_n", []*int64{ptr[int64](-3), ptr[int64](1 << 62), nil}},
		{"p_f", []*float64{nil, ptr(2.5), ptr(-1e300)}},
		{"p_s", []*string{ptr(""), ptr("é\"x"), nil}},
		{"p_at", []*time.Time{ptr(at), nil, nil}},
		{"p_tags", [][]*string{{ptr("a"), nil}, {}, {ptr("b")}}},
		{"p_nums", [][]*int64{{}, {ptr[int64](1), nil, ptr[int64](3)}, {}}},
	}, got)
	require.Equal(t, []string{"", "", ""}, conflicts, "nothing conflicts")

	// Current servers' own types.
	types["p_ok"] = "Nullable(Bool)"
	types["p_s"] = "LowCardinality(Nullable(String))"
	got, _ = convertTyped(b, types, noPath)
	require.Equal(t, []*bool{ptr(true), nil, ptr(false)}, got[0].values)
	require.Equal(t, []any{"", "é\"x", nil}, got[3].values)
}

func TestConvertTypedChangedTypes(t *testing.T) {
	props := []string{
		`{"n":5.5,"f":9007199254740993,"s":"x","ok":true,"at":"2026-11-27T10:00:00.5Z","v":[1,null]}`,
		`{"n":"42","f":2,"s":"y","ok":false,"at":"2026-11-27T10:00:01Z","v":[2]}`,
		`{"n":"042","ok":true,"v":[]}`,
	}
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	b := typedBatch(props,
		// The batch carries what the registry said; an operator changed
		// every column's type since.
		batch.Column{Name: "p_n", Kind: batch.String, Null: []bool{false, false, false}, Strs: []string{"5.5", "42", "042"}},
		batch.Column{Name: "p_f", Kind: batch.Int64, Null: []bool{false, false, true}, Ints: []int64{9007199254740993, 2, 0}},
		batch.Column{Name: "p_s", Kind: batch.String, Null: []bool{false, false, true}, Strs: []string{"x", "y", ""}},
		batch.Column{Name: "p_ok", Kind: batch.Bool, Null: []bool{false, false, false}, Ints: []int64{1, 0, 1}},
		batch.Column{Name: "p_at", Kind: batch.DateTime, Null: []bool{false, false, true},
			Ints: []int64{at.Add(500 * time.Millisecond).UnixMicro(), at.Add(time.Second).UnixMicro(), 0}},
		batch.Column{Name: "p_v", Kind: batch.ArrayOf(batch.Int64), Lens: []uint32{2, 1, 0},
			ElemNull: []bool{false, true, false}, Ints: []int64{1, 0, 2}},
	)
	types := map[string]string{
		"p_n":  "Nullable(Int64)",           // was String
		"p_f":  "Float64",                   // was Int64, and is not Nullable
		"p_s":  "Nullable(UUID)",            // nothing Surge fills
		"p_ok": "Nullable(Int64)",           // was UInt8
		"p_at": "Nullable(DateTime('UTC'))", // seconds
		"p_v":  "Array(Int64)",              // no NULL elements
	}
	paths := map[string]string{"p_n": "/n", "p_f": "/f", "p_s": "/s", "p_ok": "/ok", "p_at": "/at", "p_v": "/v"}
	got, conflicts := convertTyped(b, types, func(name string) string { return paths[name] })
	require.Equal(t, []typedInsert{
		{"p_n", []*int64{nil, ptr[int64](42), nil}},
		{"p_f", []float64{0, 2, 0}},
		{"p_at", []*time.Time{nil, ptr(at.Add(time.Second)), nil}},
		{"p_v", [][]int64{nil, {2}, {}}},
	}, got, "p_s and p_ok are left out: a bool has no place in Int64, nothing in UUID")
	require.Equal(t, []string{
		`{"/at":"2026-11-27T10:00:00.5Z","/f":9007199254740993,"/n":5.5,"/ok":true,"/s":"x","/v":[1,null]}`,
		`{"/ok":false,"/s":"y"}`,
		`{"/n":"042","/ok":true}`,
	}, conflicts)
}

func TestConvertTypedMergesWithTheBatchersConflicts(t *testing.T) {
	b := typedBatch([]string{`{"a":{"b":"s"},"n":"x"}`, `{"n":1}`},
		batch.Column{Name: "p_n", Kind: batch.Int64, Null: []bool{true, false}, Ints: []int64{0, 1}},
	)
	b.Conflicts[0] = `{"/a/b":"s","/n":"x"}`
	b.Unpromoted[1] = []string{"/zz"}
	// Without the registry's path, the key is the column's name and the
	// value the batch's.
	got, conflicts := convertTyped(b, map[string]string{"p_n": "Nullable(Bool)"}, noPath)
	require.Empty(t, got)
	require.Equal(t, []string{`{"/a/b":"s","/n":"x"}`, `{"p_n":1}`}, conflicts)
	require.Equal(t, `{"/a/b":"s","/n":"x"}`, b.Conflicts[0], "the batch is not changed")
	require.Empty(t, b.Conflicts[1])
}

func TestConvertTypedLeavesOutColumnsWithoutDDL(t *testing.T) {
	b := typedBatch([]string{`{"x":1}`, `{}`},
		batch.Column{Name: "p_x; DROP TABLE t", Kind: batch.Int64, Null: []bool{false, true}, Ints: []int64{1, 0}},
		batch.Column{Name: "p_missing", Kind: batch.ArrayOf(batch.Bool), Lens: []uint32{0, 2}, ElemNull: []bool{false, false}, Ints: []int64{1, 0}},
	)
	got, conflicts := convertTyped(b, map[string]string{"p_x; DROP TABLE t": "Nullable(Int64)"}, noPath)
	require.Empty(t, got)
	require.Equal(t, []string{`{"p_x; DROP TABLE t":1}`, `{"p_missing":[true,false]}`}, conflicts)
}

func TestConvertColumnRanges(t *testing.T) {
	ints := &batch.Column{Kind: batch.Int64, Null: []bool{false, false, false, false}, Ints: []int64{-129, 127, 255, 1 << 53}}
	var bad []int
	collect := func(r int) { bad = append(bad, r) }
	require.Equal(t, []int8{0, 127, 0, 0}, convertColumn(ints, columnType{base: "Int8"}, collect))
	require.Equal(t, []int{0, 2, 3}, bad)
	bad = nil
	require.Equal(t, []uint8{0, 127, 255, 0}, convertColumn(ints, columnType{base: "UInt8"}, collect))
	require.Equal(t, []int{0, 3}, bad)
	bad = nil
	require.Equal(t, []float32{-129, 127, 255, 0}, convertColumn(ints, columnType{base: "Float32"}, collect))
	require.Equal(t, []int{3}, bad, "2^53 is beyond float32's exact integers")
	bad = nil
	require.Equal(t, []string{"-129", "127", "255", "9007199254740992"}, convertColumn(ints, columnType{base: "String"}, collect))
	require.Empty(t, bad)

	floats := &batch.Column{Kind: batch.Float64, Null: []bool{false, false, false}, Floats: []float64{5, 0.1, 1e21}}
	require.Equal(t, []int64{5, 0, 0}, convertColumn(floats, columnType{base: "Int64"}, collect))
	require.Equal(t, []int{1, 2}, bad)
	bad = nil
	require.Equal(t, []string{"5", "0.1", "1e+21"}, convertColumn(floats, columnType{base: "String"}, collect))
	require.Nil(t, convertColumn(floats, columnType{base: "Bool"}, collect), "a number in a Bool column is a conflict")
	require.Nil(t, convertColumn(floats, columnType{base: "Float64", array: true}, collect))

	old := time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	times := &batch.Column{Kind: batch.DateTime, Null: []bool{false, false}, Ints: []int64{old, 1_500}}
	bad = nil
	require.Equal(t, []time.Time{time.UnixMicro(old).UTC(), time.UnixMicro(1_500).UTC()}, convertColumn(times, columnType{base: "DateTime64", precision: 6}, collect))
	require.Empty(t, bad)
	epoch := time.Unix(0, 0).UTC()
	require.Equal(t, []time.Time{time.UnixMicro(old).UTC(), epoch}, convertColumn(times, columnType{base: "DateTime64", precision: 3}, collect))
	require.Equal(t, []int{1}, bad, "1.5 ms in milliseconds")
	bad = nil
	require.Equal(t, []time.Time{epoch, epoch}, convertColumn(times, columnType{base: "DateTime"}, collect))
	require.Equal(t, []int{0, 1}, bad, "before 1970, and a fraction of a second")
	bad = nil
	require.Equal(t, []string{"1960-01-01T00:00:00Z", "1970-01-01T00:00:00.0015Z"}, convertColumn(times, columnType{base: "String"}, collect))

	arrays := &batch.Column{Kind: batch.ArrayOf(batch.Float64), Lens: []uint32{2, 0}, ElemNull: []bool{false, true}, Floats: []float64{1.5, 0}}
	require.Equal(t, []*string{ptr("[1.5,null]"), nil}, convertColumn(arrays, columnType{base: "String", nullable: true}, collect))
	require.Equal(t, [][]any{{"1.5", nil}, {}}, convertColumn(arrays, columnType{base: "String", nullable: true, lowCard: true, array: true}, collect))
}

func TestMergeConflicts(t *testing.T) {
	tests := []struct {
		name     string
		existing string
		add      []conflict
		want     string
	}{
		{"none yet", "", []conflict{{"/b", []byte(`1`)}, {"/a", []byte(`"x"`)}}, `{"/a":"x","/b":1}`},
		{"merged in key order", `{"/a/b":"s","/n":"x"}`, []conflict{{"/m", []byte(`5.5`)}}, `{"/a/b":"s","/m":5.5,"/n":"x"}`},
		{"a key there keeps its value", `{"/n":"x"}`, []conflict{{"/n", []byte(`3`)}}, `{"/n":"x"}`},
		{"keys compare as bytes", `{"/b":1}`, []conflict{{"/B", []byte(`2`)}, {"/a~1b", []byte(`3`)}}, `{"/B":2,"/a~1b":3,"/b":1}`},
		{"escapes kept as written", `{"/\"q\"":"<&>","/é":[1,{"x":null}]}`, []conflict{{"/<", []byte(`true`)}},
			`{"/\"q\"":"<&>","/<":true,"/é":[1,{"x":null}]}`},
		{"not an object", `oops`, []conflict{{"/n", []byte(`1`)}}, `{"":"oops","/n":1}`},
		{"spaces dropped", `{ "/n" : [ 1, 2 ] }`, []conflict{{"/a", []byte(`1`)}}, `{"/a":1,"/n":[1,2]}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, mergeConflicts(tc.existing, tc.add))
			// Deterministic: the same input, in any order, the same bytes.
			rev := make([]conflict, len(tc.add))
			for i, c := range tc.add {
				rev[len(rev)-1-i] = c
			}
			require.Equal(t, tc.want, mergeConflicts(tc.existing, rev))
		})
	}
}

func TestValueAt(t *testing.T) {
	doc := `{"a":{"b":[1, 2],"c/d":{"e~f":"x"}},"n":1,"n":"last","u":"\u00e9"}`
	for pointer, want := range map[string]string{
		"/a/b":         `[1,2]`,
		"/a/c~1d/e~0f": `"x"`,
		"/n":           `"last"`,
		"/u":           `"\u00e9"`,
	} {
		got, ok := valueAt(doc, pointer)
		require.True(t, ok, pointer)
		require.Equal(t, want, string(got), pointer)
	}
	for _, missing := range []string{"/a/x", "/n/x", "a", "", "/a/b/0"} {
		_, ok := valueAt(doc, missing)
		require.False(t, ok, missing)
	}
}

func TestTableVersion(t *testing.T) {
	v1 := map[string]string{}
	for _, c := range batch.BaseColumns {
		if c.Since == 1 {
			v1[c.Name] = c.Type
		}
	}
	require.Equal(t, 1, tableVersion(v1))
	require.Equal(t, []string{"_conflicts", "_unpromoted"}, defNames(baseDefs(v1)))
	require.Equal(t, "''", baseDefs(v1)[0].Default)
	v2 := map[string]string{"_conflicts": "String", "_unpromoted": "Array(String)"}
	for k, v := range v1 {
		v2[k] = v
	}
	require.Equal(t, batch.TableVersion, tableVersion(v2))
	require.Empty(t, baseDefs(v2))
	require.Equal(t, 0, tableVersion(map[string]string{}))
}

func TestAlterSettings(t *testing.T) {
	v1816, v253 := schema.Server{Major: 18, Minor: 16}, schema.Server{Major: 25, Minor: 3}
	require.Equal(t, clickhouse.Settings{"log_queries": 1, "replication_alter_columns_timeout": 5}, alterSettings(v1816, 30*time.Second))
	require.Equal(t, clickhouse.Settings{"log_queries": 1, "replication_alter_columns_timeout": 1}, alterSettings(v1816, 5*time.Second),
		"the ALTER and the insert after it fit one insert's time")
	require.Equal(t, clickhouse.Settings{"log_queries": 1, "replication_alter_columns_timeout": 1}, alterSettings(v1816, time.Second))
	require.Equal(t, clickhouse.Settings{"log_queries": 1, "replication_alter_partitions_sync": 1}, alterSettings(schema.Server{Major: 22, Minor: 8}, 30*time.Second))
	require.Equal(t, clickhouse.Settings{"log_queries": 1, "alter_sync": 1}, alterSettings(v253, 30*time.Second))
}

// BenchmarkConvertTyped converts a batch of 4,000 rows with 50 typed
// columns, half strings and half integers, each filled in one row of
// fill: a key explosion's sparse columns (fill 100) and a dense batch
// (fill 1).
func BenchmarkConvertTyped(b *testing.B) {
	for _, fill := range []int{1, 100} {
		b.Run(fmt.Sprintf("filled_1_in_%d", fill), func(b *testing.B) {
			const rows, cols = 4000, 50
			props := make([]string, rows)
			for i := range props {
				props[i] = `{}`
			}
			var columns []batch.Column
			types := map[string]string{}
			for c := range cols {
				col := batch.Column{Name: fmt.Sprintf("p_k%d", c), Kind: batch.String, Null: make([]bool, rows)}
				types[col.Name] = "Nullable(String)"
				if c%2 == 1 {
					col.Kind = batch.Int64
					types[col.Name] = "Nullable(Int64)"
				}
				for r := range rows {
					col.Null[r] = (r+c)%fill != 0
					if col.Kind == batch.String {
						col.Strs = append(col.Strs, "value")
					} else {
						col.Ints = append(col.Ints, int64(r))
					}
				}
				columns = append(columns, col)
			}
			tb := typedBatch(props, columns...)
			b.ReportAllocs()
			for b.Loop() {
				convertTyped(tb, types, noPath)
			}
		})
	}
}
