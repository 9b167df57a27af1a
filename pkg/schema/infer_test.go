package schema

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
)

// coerce puts the JSON value raw into a fresh column of kind (and
// ClickHouse type chType) and returns the column and whether it fit.
// Objects are not flattened (depth 1): they are their JSON text.
func coerce(t *testing.T, raw string, kind batch.Kind, chType string) (batch.Column, bool) {
	t.Helper()
	p := newProjector(t, func(c *Config) { c.MaxDepth = 1 })
	parsed := p.Parse(newBatch("t1", `{"v":`+raw+`}`))
	fields := parsed.rowFields(0)
	require.Len(t, fields, 1)
	c := newColumn("p_v", &Col{Type: kind.String(), CHType: chType}, 1)
	ok := c.add(parsed, 0, fields[0].v)
	return c.col, ok
}

func TestCoerceScalar(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123_000_000, time.UTC)
	tests := []struct {
		name   string
		raw    string
		kind   batch.Kind
		chType string
		want   any // int64, float64 or string; nil for NULL
		ok     bool
	}{
		{"int to int", `3`, batch.Int64, "", int64(3), true},
		{"integral float to int", `5.0`, batch.Int64, "", int64(5), true},
		{"exponent float to int", `1e3`, batch.Int64, "", int64(1000), true},
		{"fraction to int", `5.5`, batch.Int64, "", nil, false},
		{"float beyond int64", `1e19`, batch.Int64, "", nil, false},
		{"big integer to int", `18446744073709551616`, batch.Int64, "", nil, false},
		{"numeric string to int", `"42"`, batch.Int64, "", int64(42), true},
		{"negative numeric string to int", `"-42"`, batch.Int64, "", int64(-42), true},
		{"leading zero string to int", `"042"`, batch.Int64, "", nil, false},
		{"plus string to int", `"+5"`, batch.Int64, "", nil, false},
		{"word to int", `"x"`, batch.Int64, "", nil, false},
		{"bool to int", `true`, batch.Int64, "", nil, false},
		{"null to int", `null`, batch.Int64, "", nil, true},
		{"empty array to int", `[]`, batch.Int64, "", nil, true},
		{"array to int", `[1]`, batch.Int64, "", nil, false},
		{"object to int", `{}`, batch.Int64, "", nil, false},

		{"float to float", `2.5`, batch.Float64, "", 2.5, true},
		{"int to float", `2`, batch.Float64, "", 2.0, true},
		{"2^53 to float", `9007199254740992`, batch.Float64, "", 9007199254740992.0, true},
		{"beyond 2^53 to float", `9007199254740993`, batch.Float64, "", nil, false},
		{"below -2^53 to float", `-9007199254740993`, batch.Float64, "", nil, false},
		{"huge to float", `1e400`, batch.Float64, "", nil, false},
		{"numeric string to float", `"4.2"`, batch.Float64, "", 4.2, true},
		{"integer string to float", `"42"`, batch.Float64, "", 42.0, true},
		{"exponent string to float", `"1e+21"`, batch.Float64, "", 1e21, true},
		{"trailing zero string to float", `"4.20"`, batch.Float64, "", nil, false},
		{"NaN string to float", `"NaN"`, batch.Float64, "", nil, false},
		{"bool to float", `false`, batch.Float64, "", nil, false},

		{"string to string", `"a\"b"`, batch.String, "", `a"b`, true},
		{"int to string", `3`, batch.String, "", "3", true},
		{"float text kept", `2.50`, batch.String, "", "2.50", true},
		{"big integer to string", `18446744073709551616`, batch.String, "", "18446744073709551616", true},
		{"true to string", `true`, batch.String, "", "true", true},
		{"object to string", `{"a": [1, "x"]}`, batch.String, "", `{"a":[1,"x"]}`, true},
		{"array to string", `[1, "x", null]`, batch.String, "", `[1,"x",null]`, true},
		{"null to string", `null`, batch.String, "", nil, true},

		{"true to bool", `true`, batch.Bool, "", int64(1), true},
		{"false to bool", `false`, batch.Bool, "", int64(0), true},
		{"1 to bool", `1`, batch.Bool, "", nil, false},
		{"string true to bool", `"true"`, batch.Bool, "", nil, false},

		{"millis into DateTime64(3)", `"2026-11-27T10:00:00.123Z"`, batch.DateTime, "DateTime64(3, 'UTC')", at.UnixMicro(), true},
		{"millis into DateTime64(3) unspaced", `"2026-11-27T10:00:00.123Z"`, batch.DateTime, "DateTime64(3,'UTC')", at.UnixMicro(), true},
		{"offset zone", `"2026-11-27T11:00:00.123+01:00"`, batch.DateTime, "DateTime64(3, 'UTC')", at.UnixMicro(), true},
		{"micros into DateTime64(3)", `"2026-11-27T10:00:00.123456Z"`, batch.DateTime, "DateTime64(3, 'UTC')", nil, false},
		{"millis into DateTime", `"2026-11-27T10:00:00.123Z"`, batch.DateTime, "DateTime('UTC')", nil, false},
		{"zero fraction into DateTime", `"2026-11-27T10:00:00.000Z"`, batch.DateTime, "DateTime", at.Truncate(time.Second).UnixMicro(), true},
		{"seconds into DateTime", `"2026-11-27T10:00:00Z"`, batch.DateTime, "DateTime('UTC')", at.Truncate(time.Second).UnixMicro(), true},
		{"no zone", `"2026-11-27T10:00:00"`, batch.DateTime, "DateTime('UTC')", nil, false},
		{"not a time", `"soon"`, batch.DateTime, "DateTime('UTC')", nil, false},
		{"number into DateTime", `1795600000`, batch.DateTime, "DateTime('UTC')", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col, ok := coerce(t, tt.raw, tt.kind, tt.chType)
			require.Equal(t, tt.ok, ok)
			require.Equal(t, 1, col.Rows())
			require.Equal(t, tt.want == nil, col.Null[0], "NULL")
			if tt.want == nil {
				return
			}
			switch want := tt.want.(type) {
			case int64:
				require.Equal(t, want, col.Ints[0])
			case float64:
				require.Equal(t, want, col.Floats[0])
			case string:
				require.Equal(t, want, col.Strs[0])
			}
		})
	}
}

func TestCoerceArray(t *testing.T) {
	arr := batch.ArrayOf
	tests := []struct {
		name string
		raw  string
		kind batch.Kind
		want batch.Column
		ok   bool
	}{
		{"ints", `[1,null,3]`, arr(batch.Int64),
			batch.Column{Lens: []uint32{3}, ElemNull: []bool{false, true, false}, Ints: []int64{1, 0, 3}}, true},
		{"ints into floats", `[1,2.5]`, arr(batch.Float64),
			batch.Column{Lens: []uint32{2}, ElemNull: []bool{false, false}, Floats: []float64{1, 2.5}}, true},
		{"mixed into strings", `[1,"a",true,{"b":2}]`, arr(batch.String),
			batch.Column{Lens: []uint32{4}, ElemNull: []bool{false, false, false, false}, Strs: []string{"1", "a", "true", `{"b":2}`}}, true},
		{"one element fails", `[1,2.5]`, arr(batch.Int64), batch.Column{Lens: []uint32{0}}, false},
		{"scalar into array", `1`, arr(batch.Int64), batch.Column{Lens: []uint32{0}}, false},
		{"null into array", `null`, arr(batch.Int64), batch.Column{Lens: []uint32{0}}, true},
		{"empty", `[]`, arr(batch.Int64), batch.Column{Lens: []uint32{0}}, true},
		{"nulls", `[null,null]`, arr(batch.Bool),
			batch.Column{Lens: []uint32{2}, ElemNull: []bool{true, true}, Ints: []int64{0, 0}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col, ok := coerce(t, tt.raw, tt.kind, "")
			require.Equal(t, tt.ok, ok)
			tt.want.Name, tt.want.Kind = "p_v", tt.kind
			require.Equal(t, tt.want, withoutEmpty(col))
		})
	}
}

// withoutEmpty makes c's empty slices nil, to compare it with a literal.
func withoutEmpty(c batch.Column) batch.Column {
	if len(c.ElemNull) == 0 {
		c.ElemNull = nil
	}
	if len(c.Ints) == 0 {
		c.Ints = nil
	}
	if len(c.Floats) == 0 {
		c.Floats = nil
	}
	if len(c.Strs) == 0 {
		c.Strs = nil
	}
	return c
}

func TestCoerceArrayRollsBack(t *testing.T) {
	p := newProjector(t, nil)
	parsed := p.Parse(newBatch("t1", `{"v":[1,2]}`, `{"v":[3,"x"]}`, `{"v":[4]}`))
	c := newColumn("p_v", &Col{Type: batch.ArrayOf(batch.Int64).String()}, 3)
	for row := range 3 {
		c.add(parsed, row, parsed.rowFields(row)[0].v)
	}
	require.Equal(t, batch.Column{Name: "p_v", Kind: batch.ArrayOf(batch.Int64),
		Lens: []uint32{2, 0, 1}, ElemNull: []bool{false, false, false}, Ints: []int64{1, 2, 4}}, c.col)
}

func TestTimeDigits(t *testing.T) {
	for chType, want := range map[string]int{
		"": 6, "DateTime": 0, "DateTime('UTC')": 0, "DateTime64(3, 'UTC')": 3, "DateTime64(3)": 3,
		"Nullable(DateTime64(6))": 6, "DateTime64(9, 'UTC')": 6, "DateTime64(0)": 0,
	} {
		require.Equal(t, want, timeDigits(chType), chType)
	}
}

// TestSmallInt: the fast path reads every integer of at most 18 digits as
// strconv does, and leaves longer ones to it.
func TestSmallInt(t *testing.T) {
	for _, s := range []string{"0", "-0", "7", "-7", "10", "123456789012345678", "-123456789012345678",
		"999999999999999999", "-999999999999999999"} {
		want, err := strconv.ParseInt(s, 10, 64)
		require.NoError(t, err)
		got, ok := smallInt(s)
		require.True(t, ok, s)
		require.Equal(t, want, got, s)
	}
	for _, s := range []string{"", "-", "1000000000000000000", "-1000000000000000000", "9223372036854775807", "-9223372036854775808"} {
		_, ok := smallInt(s)
		require.False(t, ok, s)
	}
	// Past 18 digits classifyNumber still reads what fits, through strconv.
	require.Equal(t, value{kind: vInt, infer: batch.Int64, bits: 1 << 63}, classifyNumber("-9223372036854775808", true, span{}))
	require.Equal(t, value{kind: vNumber, infer: batch.String}, classifyNumber("9223372036854775808", true, span{}))
}
