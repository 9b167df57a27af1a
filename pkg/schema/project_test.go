package schema

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
)

var now = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

// col is a column of kind with one value per row: nil is NULL (an empty
// array); scalars are bool, int, float64, string or time.Time; an array
// row is a []any of those and nils.
func col(name string, kind batch.Kind, rows ...any) batch.Column {
	c := batch.Column{Name: name, Kind: kind}
	for _, r := range rows {
		if r == nil {
			c.AppendNull()
			continue
		}
		if !kind.IsArray() {
			c.Null = append(c.Null, false)
			appendTestValue(&c, r)
			continue
		}
		elems := r.([]any)
		c.Lens = append(c.Lens, uint32(len(elems)))
		for _, e := range elems {
			c.ElemNull = append(c.ElemNull, e == nil)
			if e == nil {
				e = zeroOf(kind.Elem())
			}
			appendTestValue(&c, e)
		}
	}
	return c
}

func zeroOf(k batch.Kind) any {
	switch k {
	case batch.Float64:
		return 0.0
	case batch.String:
		return ""
	}
	return 0
}

func appendTestValue(c *batch.Column, v any) {
	switch v := v.(type) {
	case bool:
		i := int64(0)
		if v {
			i = 1
		}
		c.Ints = append(c.Ints, i)
	case int:
		c.Ints = append(c.Ints, int64(v))
	case float64:
		c.Floats = append(c.Floats, v)
	case string:
		c.Strs = append(c.Strs, v)
	case time.Time:
		c.Ints = append(c.Ints, v.UnixMicro())
	default:
		panic(fmt.Sprintf("no test value of type %T", v))
	}
}

// step is one batch of a scenario and what its projection must be.
type step struct {
	props      []string
	tenant     string // "" is t1
	typed      []batch.Column
	conflicts  []string   // per row; nil is none in every row
	unpromoted [][]string // per row; nil is none in every row
	stats      Stats
}

// runSteps plans and projects each step's batch in turn on the schema the
// steps before agreed, checks each, and returns the last schema.
func runSteps(t *testing.T, p *Projector, doc *Doc, steps []step) *Doc {
	t.Helper()
	for i, s := range steps {
		tenant := s.tenant
		if tenant == "" {
			tenant = "t1"
		}
		b := newBatch(tenant, s.props...)
		parsed := p.Parse(b)
		doc, _ = p.Plan(parsed, doc, now)
		stats := p.Project(parsed, doc, b)
		conflicts, unpromoted := s.conflicts, s.unpromoted
		if conflicts == nil {
			conflicts = make([]string, b.Len())
		}
		if unpromoted == nil {
			unpromoted = make([][]string, b.Len())
		}
		require.Equal(t, s.typed, b.Typed, "step %d: typed", i+1)
		require.Equal(t, conflicts, b.Conflicts, "step %d: _conflicts", i+1)
		require.Equal(t, unpromoted, b.Unpromoted, "step %d: _unpromoted", i+1)
		stats.Paths = nil // TestProjectPaths checks them
		require.Equal(t, s.stats, stats, "step %d: stats", i+1)
	}
	return doc
}

// columnTypes are doc's columns as "name type path".
func columnTypes(doc *Doc) []string {
	var out []string
	if doc == nil {
		return nil
	}
	for name, c := range doc.Columns {
		out = append(out, name+" "+c.Type+" "+c.Path)
	}
	slices.Sort(out)
	return out
}

const (
	tBool  = batch.Bool
	tInt   = batch.Int64
	tFloat = batch.Float64
	tStr   = batch.String
)

var tArr = batch.ArrayOf

// TestAcceptance runs the design's acceptance cases that are pure logic
// (section 5: 1-10 and the extra checks) as Plan and Project over
// in-memory batches, each request its own batch.
func TestAcceptance(t *testing.T) {
	tests := []struct {
		name    string
		steps   []step
		columns []string
	}{
		{
			name: "1 basic inference",
			steps: []step{{
				props: []string{`{"plan":"pro","n":3,"price":9.99,"ok":true}`},
				typed: []batch.Column{col("p_n", tInt, 3), col("p_ok", tBool, true), col("p_plan", tStr, "pro"), col("p_price", tFloat, 9.99)},
			}},
			columns: []string{"p_n int64 /n", "p_ok bool /ok", "p_plan string /plan", "p_price float64 /price"},
		},
		{
			name: "2 number, then string in the same key",
			steps: []step{
				{props: []string{`{"n":3}`}, typed: []batch.Column{col("p_n", tInt, 3)}},
				{props: []string{`{"n":"x"}`}, conflicts: []string{`{"/n":"x"}`}, stats: Stats{Conflicts: map[string]int{"type": 1}}},
				{props: []string{`{"n":"42"}`}, typed: []batch.Column{col("p_n", tInt, 42)}},
			},
			columns: []string{"p_n int64 /n"},
		},
		{
			name: "3 conflict inside the introducing batch",
			steps: []step{{
				props: []string{`{"v":1}`, `{"v":"a"}`, `{"v":true}`},
				typed: []batch.Column{col("p_v", tStr, "1", "a", "true")},
			}},
			columns: []string{"p_v string /v"},
		},
		{
			name: "4 int, then float; float, then int",
			steps: []step{
				{props: []string{`{"amount":5,"f":1.5}`}, typed: []batch.Column{col("p_amount", tInt, 5), col("p_f", tFloat, 1.5)}},
				{props: []string{`{"amount":5.0,"f":2}`}, typed: []batch.Column{col("p_amount", tInt, 5), col("p_f", tFloat, 2.0)}},
				{props: []string{`{"amount":5.5}`}, conflicts: []string{`{"/amount":5.5}`}, stats: Stats{Conflicts: map[string]int{"type": 1}}},
				{props: []string{`{"f":9007199254740993}`}, conflicts: []string{`{"/f":9007199254740993}`}, stats: Stats{Conflicts: map[string]int{"type": 1}}},
			},
			columns: []string{"p_amount int64 /amount", "p_f float64 /f"},
		},
		{
			name: "5 booleans",
			steps: []step{
				{props: []string{`{"flag":true}`}, typed: []batch.Column{col("p_flag", tBool, true)}},
				{props: []string{`{"flag":false}`}, typed: []batch.Column{col("p_flag", tBool, false)}},
				{props: []string{`{"flag":1}`}, conflicts: []string{`{"/flag":1}`}, stats: Stats{Conflicts: map[string]int{"type": 1}}},
				{props: []string{`{"flag":"true"}`}, conflicts: []string{`{"/flag":"true"}`}, stats: Stats{Conflicts: map[string]int{"type": 1}}},
			},
			columns: []string{"p_flag bool /flag"},
		},
		{
			name: "6 nested objects and depth",
			steps: []step{{
				props: []string{`{"context":{"page":{"url":"/a","title":"A"}},"a":{"b":{"c":{"d":{"e":1}}}}}`},
				typed: []batch.Column{col("p_a_b_c", tStr, `{"d":{"e":1}}`), col("p_context_page_title", tStr, "A"), col("p_context_page_url", tStr, "/a")},
			}},
			columns: []string{"p_a_b_c string /a/b/c", "p_context_page_title string /context/page/title", "p_context_page_url string /context/page/url"},
		},
		{
			name: "7 arrays",
			steps: []step{
				{
					props: []string{`{"tags":["a","b"],"nums":[1,2.5],"maybe":[1,null],"matrix":[[1,2],[3]],"items":[{"sku":"A1"}],"empty":[]}`},
					typed: []batch.Column{
						col("p_items", tStr, `[{"sku":"A1"}]`), col("p_matrix", tStr, "[[1,2],[3]]"),
						col("p_maybe", tArr(tInt), []any{1, nil}), col("p_nums", tArr(tFloat), []any{1.0, 2.5}),
						col("p_tags", tArr(tStr), []any{"a", "b"}),
					},
				},
				{
					props: []string{`{"tags":["x"],"nums":[1,2,3]}`},
					typed: []batch.Column{col("p_nums", tArr(tFloat), []any{1.0, 2.0, 3.0}), col("p_tags", tArr(tStr), []any{"x"})},
				},
			},
			columns: []string{"p_items string /items", "p_matrix string /matrix", "p_maybe array(int64) /maybe",
				"p_nums array(float64) /nums", "p_tags array(string) /tags"},
		},
		{
			name: "8 dots, spaces, unicode, case, collisions",
			steps: []step{
				{
					props: []string{`{"a.b":1,"first name":"x","Странное Имя":2,"userID":"u","HTTPServer":"h"}`},
					typed: []batch.Column{col("p_a_b", tInt, 1), col("p_first_name", tStr, "x"), col("p_http_server", tStr, "h"),
						col("p_ue3bd2767", tInt, 2), col("p_user_id", tStr, "u")},
				},
				{
					props:     []string{`{"a":{"b":"s"},"UserId":"v"}`},
					conflicts: []string{`{"/UserId":"v","/a/b":"s"}`},
					stats:     Stats{Conflicts: map[string]int{"collision": 2}},
				},
			},
			columns: []string{"p_a_b int64 /a.b", "p_first_name string /first name", "p_http_server string /HTTPServer",
				"p_ue3bd2767 int64 /Странное Имя", "p_user_id string /userID"},
		},
		{
			name: "9 reserved names",
			steps: []step{{
				props: []string{`{"ts":"yesterday","tenant":"evil","event_id":"x","properties":"y","_conflicts":"z","seq":-1,"shard":99}`},
				typed: []batch.Column{col("p_conflicts", tStr, "z"), col("p_event_id", tStr, "x"), col("p_properties", tStr, "y"),
					col("p_seq", tInt, -1), col("p_shard", tInt, 99), col("p_tenant", tStr, "evil"), col("p_ts", tStr, "yesterday")},
			}},
			columns: []string{"p_conflicts string /_conflicts", "p_event_id string /event_id", "p_properties string /properties",
				"p_seq int64 /seq", "p_shard int64 /shard", "p_tenant string /tenant", "p_ts string /ts"},
		},
		{
			name: "10 very long keys",
			steps: []step{
				{props: []string{`{"` + strings.Repeat("k", 300) + `":1}`}, typed: []batch.Column{col("p_"+strings.Repeat("k", 53)+"_17b16d8e", tInt, 1)}},
				{props: []string{`{"` + strings.Repeat("я", 200) + `":1}`}, typed: []batch.Column{col("p_ua7036d03", tInt, 1)}},
			},
			columns: []string{"p_" + strings.Repeat("k", 53) + "_17b16d8e int64 /" + strings.Repeat("k", 300), "p_ua7036d03 int64 /" + strings.Repeat("я", 200)},
		},
		{
			name: "extra: duplicate keys keep the last",
			steps: []step{{
				props: []string{`{"a":1,"a":"x"}`},
				typed: []batch.Column{col("p_a", tStr, "x")},
			}},
			columns: []string{"p_a string /a"},
		},
		{
			name: "extra: null creates nothing, then 5 does",
			steps: []step{
				{props: []string{`{"z":null}`}},
				{props: []string{`{"z":5}`}, typed: []batch.Column{col("p_z", tInt, 5)}},
				{props: []string{`{"z":null,"y":[]}`}},
			},
			columns: []string{"p_z int64 /z"},
		},
		{
			name: "extra: an integer beyond int64 is a string",
			steps: []step{{
				props: []string{`{"n":18446744073709551616}`},
				typed: []batch.Column{col("p_n", tStr, "18446744073709551616")},
			}},
			columns: []string{"p_n string /n"},
		},
		{
			name: "two new paths of one name in one batch: the first admitted owns it",
			steps: []step{{
				props:     []string{`{"a.b":1}`, `{"a":{"b":2}}`},
				typed:     []batch.Column{col("p_a_b", tInt, 1, nil)},
				conflicts: []string{"", `{"/a/b":2}`},
				stats:     Stats{Conflicts: map[string]int{"collision": 1}},
			}},
			columns: []string{"p_a_b int64 /a.b"},
		},
		{
			name: "Segment's context fields, the rest of its envelope left alone",
			steps: []step{{
				props: []string{`{"plan":"team","_segment":{"messageId":"m1","context":{"page":{"url":"https://x.test/a","path":"/a","hash":"#h"},` +
					`"userAgent":"UA/1","library":{"name":"analytics-node","version":"6.2.0"},"traits":{"email":"a@b.c"}},"integrations":{"All":true}}}`},
				typed: []batch.Column{
					col("context_library_name", tStr, "analytics-node"), col("context_library_version", tStr, "6.2.0"),
					col("context_page_path", tStr, "/a"), col("context_page_url", tStr, "https://x.test/a"),
					col("context_user_agent", tStr, "UA/1"), col("p_plan", tStr, "team"),
				},
			}},
			columns: []string{
				"context_library_name string /_segment/context/library/name", "context_library_version string /_segment/context/library/version",
				"context_page_path string /_segment/context/page/path", "context_page_url string /_segment/context/page/url",
				"context_user_agent string /_segment/context/userAgent", "p_plan string /plan",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProjector(t, nil)
			doc := runSteps(t, p, nil, tt.steps)
			require.Equal(t, tt.columns, columnTypes(doc))
			for name := range doc.Columns {
				require.True(t, validColumn(name), name)
			}
		})
	}
}

// TestKeyExplosion is the design's case 11: 10,000 distinct keys in one
// batch add the hour's 50 columns, picked by frequency then name, and the
// rest are listed as unpromoted; ids used as keys are denied.
func TestKeyExplosion(t *testing.T) {
	p := newProjector(t, nil)
	props := make([]string, 1000)
	for i := range props {
		var sb strings.Builder
		sb.WriteByte('{')
		for k := 10 * i; k < 10*i+10; k++ {
			if k > 10*i {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, `"k_%06d":%d`, k, i)
		}
		sb.WriteByte('}')
		props[i] = sb.String()
	}
	b := newBatch("t1", props...)
	parsed := p.Parse(b)
	doc, changed := p.Plan(parsed, nil, now)
	require.True(t, changed)
	require.Len(t, doc.Columns, 50)
	for k := range 50 {
		c := doc.Columns[fmt.Sprintf("p_k_%06d", k)]
		require.NotNil(t, c, k)
		require.Equal(t, Col{Path: fmt.Sprintf("/k_%06d", k), Type: "int64", Origin: Inferred, Tenant: "t1", Added: now}, *c)
	}
	require.Equal(t, Rate{WindowStart: now, Added: 50}, doc.Rate)

	stats := p.Project(parsed, doc, b)
	require.Len(t, stats.Paths, 9950, "a path each, for the tenant's problems")
	stats.Paths = nil
	require.Equal(t, Stats{Unpromoted: map[string]int{"rate": 9950}}, stats)
	require.Len(t, b.Typed, 50)
	for i := range 5 {
		require.Nil(t, b.Unpromoted[i], i)
	}
	for i := 5; i < 1000; i++ {
		want := make([]string, 10)
		for j := range want {
			want[j] = fmt.Sprintf("/k_%06d", 10*i+j)
		}
		require.Equal(t, want, b.Unpromoted[i], i)
	}
	require.Equal(t, col("p_k_000000", tInt, append([]any{0}, make([]any, 999)...)...), b.Typed[0])

	// A second request: ids used as keys are denied.
	b = newBatch("t1", `{"550e8400-e29b-41d4-a716-446655440000":1,"12345":1}`)
	parsed = p.Parse(b)
	next, changed := p.Plan(parsed, doc, now.Add(2*time.Hour))
	require.False(t, changed)
	require.Same(t, doc, next)
	stats = p.Project(parsed, doc, b)
	require.Equal(t, [][]string{{"/12345", "/550e8400-e29b-41d4-a716-446655440000"}}, b.Unpromoted)
	require.Equal(t, Stats{Unpromoted: map[string]int{"deny": 2}}, stats)
}

// TestDeclared is the design's case 15: with typed_columns declared, only
// the declared columns fill, on either server's DateTime type.
func TestDeclared(t *testing.T) {
	createdAt := time.Date(2026, 11, 27, 10, 0, 0, 123_000_000, time.UTC)
	for _, tt := range []struct {
		server, dateTime string
		first            step
	}{
		{"25.3", "DateTime64(3, 'UTC')", step{
			typed:      []batch.Column{col("p_created_at", batch.DateTime, createdAt), col("p_plan", tStr, "pro")},
			unpromoted: [][]string{{"/extra"}},
			stats:      Stats{Unpromoted: map[string]int{"declared": 1}},
		}},
		{"18.16", "DateTime('UTC')", step{
			typed:      []batch.Column{col("p_plan", tStr, "pro")},
			conflicts:  []string{`{"/created_at":"2026-11-27T10:00:00.123Z"}`},
			unpromoted: [][]string{{"/extra"}},
			stats:      Stats{Conflicts: map[string]int{"type": 1}, Unpromoted: map[string]int{"declared": 1}},
		}},
	} {
		t.Run(tt.server, func(t *testing.T) {
			p := newProjector(t, func(c *Config) {
				c.Mode = Declared
				c.Columns = map[string]DeclaredColumn{"/plan": {Type: "LowCardinality(String)"}, "/created_at": {Type: tt.dateTime}}
			})
			doc := &Doc{Format: Format, Columns: map[string]*Col{
				"p_plan":       {Path: "/plan", Type: "string", CHType: "LowCardinality(String)", Origin: DeclaredOrigin},
				"p_created_at": {Path: "/created_at", Type: "datetime", CHType: tt.dateTime, Origin: DeclaredOrigin},
			}}
			first := tt.first
			first.props = []string{`{"plan":"pro","created_at":"2026-11-27T10:00:00.123Z","extra":1}`}
			last := runSteps(t, p, doc, []step{first, {
				props:     []string{`{"created_at":"soon"}`},
				conflicts: []string{`{"/created_at":"soon"}`},
				stats:     Stats{Conflicts: map[string]int{"type": 1}},
			}, {
				props: []string{`{"created_at":"2026-11-27T10:00:01Z"}`},
				typed: []batch.Column{col("p_created_at", batch.DateTime, createdAt.Truncate(time.Second).Add(time.Second))},
			}})
			require.Same(t, doc, last, "declared mode adds no column")
		})
	}
}

func TestUnpromotedReasons(t *testing.T) {
	tests := []struct {
		name   string
		config func(*Config)
		doc    *Doc
		steps  []step
	}{
		{
			name:   "beyond the keys of an event",
			config: func(c *Config) { c.MaxKeysPerEvent = 2 },
			steps: []step{{
				props:      []string{`{"a":1,"b":null,"c":2,"d":[]}`, `{"a":2}`},
				typed:      []batch.Column{col("p_a", tInt, 1, 2)},
				unpromoted: [][]string{{"/c"}, nil},
				stats:      Stats{Unpromoted: map[string]int{"keys": 1}},
			}},
		},
		{
			name:   "table full",
			config: func(c *Config) { c.MaxColumns = 1 },
			steps: []step{{
				props:      []string{`{"a":1,"b":2}`},
				typed:      []batch.Column{col("p_a", tInt, 1)},
				unpromoted: [][]string{{"/b"}},
				stats:      Stats{Unpromoted: map[string]int{"table_limit": 1}},
			}},
		},
		{
			name:   "tenant full, another tenant's key still added",
			config: func(c *Config) { c.MaxColumnsPerTenant = 1 },
			steps: []step{
				{
					props:      []string{`{"a":1,"b":2}`},
					typed:      []batch.Column{col("p_a", tInt, 1)},
					unpromoted: [][]string{{"/b"}},
					stats:      Stats{Unpromoted: map[string]int{"tenant_limit": 1}},
				},
				{
					tenant: "t2",
					props:  []string{`{"b":2}`},
					typed:  []batch.Column{col("p_b", tInt, 2)},
				},
			},
		},
		{
			name:   "the hour's columns added",
			config: func(c *Config) { c.MaxNewColumnsPerHour = 1 },
			steps: []step{
				{
					props:      []string{`{"a":1,"b":2}`, `{"b":3}`},
					typed:      []batch.Column{col("p_b", tInt, 2, 3)},
					unpromoted: [][]string{{"/a"}, nil},
					stats:      Stats{Unpromoted: map[string]int{"rate": 1}},
				},
				{
					props:      []string{`{"a":1}`},
					unpromoted: [][]string{{"/a"}},
					stats:      Stats{Unpromoted: map[string]int{"rate": 1}},
				},
			},
		},
		{
			name: "failed column",
			doc: &Doc{Columns: map[string]*Col{"p_x": {Path: "/x", Type: "int64", Origin: Inferred}},
				Failed: map[string]string{"p_x": "Code 44"}},
			steps: []step{{
				props:      []string{`{"x":1}`},
				unpromoted: [][]string{{"/x"}},
				stats:      Stats{Unpromoted: map[string]int{"failed": 1}},
			}},
		},
		{
			name: "failed column no longer in the schema is not proposed again",
			doc:  &Doc{Failed: map[string]string{"p_x": "Code 44"}},
			steps: []step{{
				props:      []string{`{"x":1}`},
				unpromoted: [][]string{{"/x"}},
				stats:      Stats{Unpromoted: map[string]int{"failed": 1}},
			}},
		},
		{
			name:   "declared mode",
			config: func(c *Config) { c.Mode = Declared },
			steps: []step{{
				props:      []string{`{"x":1,"y":{"z":"a"},"n":null}`},
				unpromoted: [][]string{{"/x", "/y/z"}},
				stats:      Stats{Unpromoted: map[string]int{"declared": 2}},
			}},
		},
		{
			name: "declared column the sink has not written yet",
			config: func(c *Config) {
				c.Columns = map[string]DeclaredColumn{"/total": {Type: "Float64"}, "/order/sum": {Type: "Int64", Name: "p_order_n"}}
			},
			steps: []step{{
				props:      []string{`{"total":1,"order_n":2,"order":{"sum":3},"n":4}`},
				typed:      []batch.Column{col("p_n", tInt, 4)},
				unpromoted: [][]string{{"/order/sum", "/order_n", "/total"}},
				stats:      Stats{Unpromoted: map[string]int{"pending": 3}},
			}},
		},
		{
			name:   "ignored paths are neither promoted nor listed",
			config: func(c *Config) { c.Ignore = []string{"/debug"} },
			steps: []step{{
				props: []string{`{"debug":{"a":1},"n":1}`},
				typed: []batch.Column{col("p_n", tInt, 1)},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runSteps(t, newProjector(t, tt.config), tt.doc, tt.steps)
		})
	}
}

// A batch built on an older schema lists the keys added since as pending.
func TestProjectOnOlderSchema(t *testing.T) {
	p := newProjector(t, nil)
	b := newBatch("t1", `{"a":1,"b":"x"}`)
	parsed := p.Parse(b)
	stats := p.Project(parsed, nil, b)
	require.Nil(t, b.Typed)
	require.Equal(t, []string{""}, b.Conflicts)
	require.Equal(t, [][]string{{"/a", "/b"}}, b.Unpromoted)
	require.Equal(t, Stats{Unpromoted: map[string]int{"pending": 2}}, stats)
}

func TestModeOff(t *testing.T) {
	p := newProjector(t, func(c *Config) { c.Mode = Off })
	b := newBatch("t1", `{"a":1}`)
	parsed := p.Parse(b)
	next, changed := p.Plan(parsed, nil, now)
	require.False(t, changed)
	require.Nil(t, next)
	require.Equal(t, Stats{}, p.Project(parsed, nil, b))
	require.False(t, b.Projected())
	require.Nil(t, b.Typed)
}

func TestPlanLeavesDocAlone(t *testing.T) {
	p := newProjector(t, nil)
	doc := &Doc{Format: Format, Columns: map[string]*Col{"p_a": {Path: "/a", Type: "int64", Origin: Inferred, Tenant: "t1"}},
		Rate: Rate{WindowStart: now.Add(-time.Hour), Added: 50}}
	before := doc.Clone()
	parsed := p.Parse(newBatch("t1", `{"a":1,"b":2}`))

	next, changed := p.Plan(parsed, doc, now)
	require.True(t, changed, "the hour has passed: a new window")
	require.Equal(t, before, doc)
	require.Equal(t, Rate{WindowStart: now, Added: 1}, next.Rate)
	require.Equal(t, &Col{Path: "/b", Type: "int64", Origin: Inferred, Tenant: "t1", Added: now}, next.Columns["p_b"])

	next, changed = p.Plan(parsed, doc, now.Add(-time.Minute))
	require.False(t, changed, "the window is full")
	require.Same(t, doc, next)
}

// A key beyond an event's first keys still fills its column once it has one.
func TestKeysBeyondTheLimitFillTheirColumn(t *testing.T) {
	p := newProjector(t, func(c *Config) { c.MaxKeysPerEvent = 1 })
	doc := runSteps(t, p, nil, []step{{
		props: []string{`{"a":1,"b":2}`, `{"b":3}`},
		typed: []batch.Column{col("p_a", tInt, 1, nil), col("p_b", tInt, 2, 3)},
	}})
	require.Equal(t, []string{"p_a int64 /a", "p_b int64 /b"}, columnTypes(doc))
}

func TestPlanOrder(t *testing.T) {
	p := newProjector(t, func(c *Config) { c.MaxNewColumnsPerHour = 2 })
	parsed := p.Parse(newBatch("t1", `{"z":1,"b":1}`, `{"z":2,"c":1}`, `{"c":2,"a":1,"y":true}`, `{"y":1.5}`))
	doc, _ := p.Plan(parsed, nil, now)
	require.Equal(t, []string{"p_c int64 /c", "p_y string /y"}, columnTypes(doc), "c, y and z in two rows each; then by name")
}

func TestPlanJoinsTheBatch(t *testing.T) {
	p := newProjector(t, nil)
	parsed := p.Parse(newBatch("t1", `{"a":1,"b":[1],"c":[1],"d":true}`, `{"a":1.5,"b":[2.5],"c":3,"d":null}`))
	doc, _ := p.Plan(parsed, nil, now)
	require.Equal(t, []string{"p_a float64 /a", "p_b array(float64) /b", "p_c string /c", "p_d bool /d"}, columnTypes(doc))
}

func TestProjectDeterministic(t *testing.T) {
	p := newProjector(t, nil)
	props := []string{
		`{"b":1,"a":"x","c":{"d":[1,2]},"e":"y"}`,
		`{"a":2,"b":"no","c":{"d":["z"]},"zz":1,"x":{"y":{"z":{"w":1}}}}`,
		`{"e":[1,"a"],"_segment":{"context":{"ip":"1.2.3.4"}}}`,
	}
	var doc *Doc
	for range 2 { // the second batch has the first's schema
		doc, _ = p.Plan(p.Parse(newBatch("t1", props[:1]...)), doc, now)
	}
	first := newBatch("t1", props...)
	second := newBatch("t1", props...)
	p.Project(p.Parse(first), doc, first)
	p.Project(p.Parse(second), doc, second)
	require.Equal(t, first, second)
	require.Equal(t, []string{"", `{"/b":"no","/c/d":["z"]}`, ""}, first.Conflicts)
	require.Equal(t, [][]string{nil, {"/x/y/z", "/zz"}, {"/_segment/context/ip"}}, first.Unpromoted)
}

func TestProjectOtherBatchPanics(t *testing.T) {
	p := newProjector(t, nil)
	parsed := p.Parse(newBatch("t1", `{"a":1}`))
	require.Panics(t, func() { p.Project(parsed, nil, newBatch("t1", `{"a":1}`)) })
}

// One Projector serves every shard at once (go test -race checks it).
func TestProjectorConcurrentUse(t *testing.T) {
	p := newProjector(t, nil)
	var wg sync.WaitGroup
	for _, name := range Profiles {
		wg.Go(func() {
			for range 5 {
				b := profileBatch(name, 200)
				parsed := p.Parse(b)
				doc, _ := p.Plan(parsed, nil, now)
				p.Project(parsed, doc, b)
				assert.Len(t, b.Conflicts, 200)
			}
		})
	}
	wg.Wait()
}
