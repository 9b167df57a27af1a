package schema

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

// newBatch is a batch of one event per properties, of tenant.
func newBatch(tenant string, props ...string) *batch.Batch {
	b := &batch.Batch{}
	for i, p := range props {
		b.Append(uint64(i+1), []event.Event{{EventID: fmt.Sprintf("e%d", i), Tenant: tenant, Properties: p}})
	}
	return b
}

func newProjector(t testing.TB, change func(*Config)) *Projector {
	t.Helper()
	cfg := DefaultConfig()
	if change != nil {
		change(&cfg)
	}
	p, err := NewProjector(cfg)
	require.NoError(t, err)
	return p
}

// flat lists each field of the one row of props as "pointer kind json".
func flat(t *testing.T, p *Projector, props string) []string {
	t.Helper()
	parsed := p.Parse(newBatch("t1", props))
	var out []string
	for _, f := range parsed.rowFields(0) {
		kind := "none"
		if f.v.infer != 0 {
			kind = f.v.infer.String()
		}
		out = append(out, parsed.keys[f.key].pointer+" "+kind+" "+string(parsed.appendValueJSON(nil, 0, f.v)))
	}
	return out
}

func TestFlatten(t *testing.T) {
	tests := []struct {
		name  string
		props string
		want  []string
	}{
		{"scalars", `{"b":true,"i":-3,"f":9.99,"s":"x","z":null}`,
			[]string{"/b bool true", "/i int64 -3", "/f float64 9.99", "/s string \"x\"", "/z none null"}},
		{"number kinds", `{"e":1e3,"neg0":-0,"big":18446744073709551616,"huge":1e400,"keep":2.50}`,
			[]string{"/e float64 1e3", "/neg0 int64 -0", "/big string 18446744073709551616", "/huge string 1e400", "/keep float64 2.50"}},
		{"objects recurse to the depth, then are JSON", `{"a":{"b":{"c":{"d":{"e":1}}}},"x":{"y":2}}`,
			[]string{`/a/b/c string {"d":{"e":1}}`, "/x/y int64 2"}},
		{"empty object at depth is JSON", `{"a":{"b":{"c":{}}},"e":{}}`, []string{`/a/b/c string {}`}},
		{"arrays", `{"tags":["a","b"],"nums":[1,2.5],"maybe":[1,null],"matrix":[[1,2],[3]],"items":[{"sku":"A1"}],"empty":[],"nulls":[null],"mixed":[true,1]}`,
			[]string{`/tags array(string) ["a","b"]`, "/nums array(float64) [1,2.5]", "/maybe array(int64) [1,null]",
				"/matrix string [[1,2],[3]]", `/items string [{"sku":"A1"}]`, "/empty none []", "/nulls none [null]", "/mixed string [true,1]"}},
		{"duplicate keys: the last wins", `{"a":1,"b":2,"a":"x"}`, []string{"/b int64 2", `/a string "x"`}},
		{"duplicate objects: the last wins whole", `{"a":{"b":1,"c":2},"a":{"c":3}}`, []string{"/a/c int64 3"}},
		{"duplicate object replaced by scalar", `{"a":{"b":1},"a":5}`, []string{"/a int64 5"}},
		{"pointer escapes", `{"a/b":1,"c~d":2,"":3}`, []string{"/a~1b int64 1", "/c~0d int64 2", "/ int64 3"}},
		{"escaped strings are unescaped, then escaped anew", `{"s":"a\"b\u00e9\n\u0001"}`, []string{`/s string "a\"bé\n\u0001"`}},
		{"escaped keys", `{"a\u002fb":1}`, []string{"/a~1b int64 1"}},
		{"not an object", `[1,2]`, nil},
		{"not JSON", `{"a":`, nil},
		{"lenient parser's numbers are not JSON", `{"a":1,"b":NaN}`, nil},
		{"lenient parser's numbers in JSON text", `{"a":1,"b":{"c":{"d":{"e":+1}}}}`, nil},
		{"segment: listed context fields only", `{"_segment":{"context":{"page":{"url":"/a","hash":"#x"},"userAgent":"UA","traits":{"x":1},"library":"js"},"messageId":"m"},"n":1}`,
			[]string{"/_segment/context/page/url string \"/a\"", "/_segment/context/userAgent string \"UA\"", "/n int64 1"}},
		{"segment: a leaf holding an object is its JSON", `{"_segment":{"context":{"device":{"id":{"a":1}}}}}`,
			[]string{`/_segment/context/device/id string {"a":1}`}},
		{"segment key below the top is a property", `{"a":{"_segment":{"x":1}}}`, []string{"/a/_segment/x int64 1"}},
	}
	p := newProjector(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, flat(t, p, tt.props))
		})
	}
}

func TestFlattenIgnore(t *testing.T) {
	p := newProjector(t, func(c *Config) { c.Ignore = []string{"/debug", "/context/headers"} })
	require.Equal(t, []string{"/context/page int64 1", "/n int64 2"},
		flat(t, p, `{"debug":{"x":1},"context":{"headers":{"a":"b"},"page":1},"n":2}`))
}

func TestFlattenDepth(t *testing.T) {
	p := newProjector(t, func(c *Config) { c.MaxDepth = 1 })
	require.Equal(t, []string{`/a string {"b":1}`, `/_segment/context/page string {"url":"/x"}`},
		flat(t, p, `{"a":{"b":1},"_segment":{"context":{"page":{"url":"/x"}}}}`))
}

func TestKeyNames(t *testing.T) {
	p := newProjector(t, nil)
	parsed := p.Parse(newBatch("t1", `{"context":{"page":{"url":1}},"_segment":{"context":{"page":{"url":"/a"},"userAgent":"x"}}}`))
	names := map[string]string{}
	for _, k := range parsed.keys {
		if k.hasField {
			names[k.pointer] = k.name
		}
	}
	require.Equal(t, map[string]string{
		"/context/page/url":           "p_context_page_url",
		"/_segment/context/page/url":  "context_page_url",
		"/_segment/context/userAgent": "context_user_agent",
	}, names)
}

func TestJoin(t *testing.T) {
	arr := batch.ArrayOf
	tests := []struct {
		a, b, want batch.Kind
	}{
		{batch.Int64, batch.Int64, batch.Int64},
		{0, batch.Bool, batch.Bool},
		{batch.Bool, 0, batch.Bool},
		{batch.Int64, batch.Float64, batch.Float64},
		{batch.Float64, batch.Int64, batch.Float64},
		{batch.Bool, batch.Int64, batch.String},
		{batch.String, batch.Int64, batch.String},
		{arr(batch.Int64), arr(batch.Float64), arr(batch.Float64)},
		{arr(batch.Int64), arr(batch.String), arr(batch.String)},
		{arr(batch.Int64), batch.Int64, batch.String},
		{batch.String, arr(batch.Bool), batch.String},
	}
	for _, tt := range tests {
		t.Run(tt.a.String()+"+"+tt.b.String(), func(t *testing.T) {
			require.Equal(t, tt.want, join(tt.a, tt.b))
		})
	}
}

// TestFieldSize guards the size of a field: a batch holds one for each of
// its events' properties, about 20 an event.
func TestFieldSize(t *testing.T) {
	require.LessOrEqual(t, unsafe.Sizeof(field{}), uintptr(32))
}

// TestValuesReadTheRowInPlace checks that values sent as they are read
// (strings without escapes, numbers, compact JSON) are spans of the row,
// and only what is written anew is copied into the batch's text.
func TestValuesReadTheRowInPlace(t *testing.T) {
	p := newProjector(t, nil)
	props := `{"s":"plain","e":"a\"b","n":-1.5,"o":{"a":{"b":{"c":{"d":1}}}},"w":[1, 2],"c":[1,2]}`
	parsed := p.Parse(newBatch("t1", props))
	got := map[string]bool{}
	for _, f := range parsed.rowFields(0) {
		got[parsed.keys[f.key].pointer] = f.v.text.at&inRow != 0
	}
	require.Equal(t, map[string]bool{"/s": true, "/e": false, "/n": true, "/o/a/b": true, "/w": false, "/c": true}, got)
	require.Equal(t, `a"b[1,2]`, parsed.text)
}
