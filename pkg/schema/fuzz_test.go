package schema

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
)

// FuzzProject projects arbitrary properties (one row per line) under
// limits drawn from the input: it never panics, leaves properties alone,
// gives the same projection twice (the same encoded block, byte for byte),
// and every projection is well formed.
func FuzzProject(f *testing.F) {
	seeds := []string{
		`{"plan":"pro","n":3,"price":9.99,"ok":true}`,
		"{\"n\":3}\n{\"n\":\"x\"}\n{\"n\":\"42\"}",
		`{"a":{"b":{"c":{"d":{"e":1}}}},"tags":["a",null],"m":[[1],{"x":2}],"e":[]}`,
		"{\"a.b\":1,\"Странное Имя\":2,\"userID\":\"u\"}\n{\"a\":{\"b\":\"s\"},\"UserId\":\"v\"}",
		`{"a":1,"a":"x","a":{"b":1}}`,
		`{"n":18446744073709551616,"f":1e400,"z":-0,"s":"\u0000\ud800"}`,
		`{"_segment":{"context":{"page":{"url":"/a"},"userAgent":{"x":1},"ip":[1]},"other":1}}`,
		`{"12345":1,"550e8400-e29b-41d4-a716-446655440000":2,"a@b":3}`,
		`{"a":NaN,"b":+1}`,
		`[1,2]`,
		`{"~/":{"/~":1}}`,
	}
	for i, s := range seeds {
		f.Add(s, uint8(i), uint8(i*7))
	}
	f.Fuzz(func(t *testing.T, input string, depth, keys uint8) {
		p := newProjector(t, func(c *Config) {
			c.MaxDepth = 1 + int(depth%4)
			c.MaxKeysPerEvent = int(keys % 12)
			c.MaxNewColumnsPerHour = 4
			c.MaxColumnsPerTenant = 6
			c.Ignore = []string{"/ignored"}
		})
		props := strings.Split(input, "\n")
		if len(props) > 16 {
			props = props[:16]
		}
		kept := slices.Clone(props)

		// A first batch agrees a schema; the second is projected on it twice.
		first := fuzzBatch(props)
		doc, _ := p.Plan(p.Parse(first), nil, now)
		a, b := fuzzBatch(props), fuzzBatch(props)
		pa, pb := p.Parse(a), p.Parse(b)
		docA, _ := p.Plan(pa, doc, now)
		docB, _ := p.Plan(pb, doc, now)
		require.Equal(t, docA, docB)
		statsA, statsB := p.Project(pa, docA, a), p.Project(pb, docB, b)
		require.Equal(t, statsA, statsB)
		require.Equal(t, a, b)
		// The block BATCHES carries is byte-identical, and decodes back.
		encA := batch.Encode(a)
		require.Equal(t, encA, batch.Encode(b))
		back, err := batch.Decode(encA)
		require.NoError(t, err)
		require.Equal(t, encA, batch.Encode(back))
		require.Equal(t, kept, a.Properties)
		checkProjection(t, a, docA)
	})
}

// fuzzBatch is a batch of props, of two tenants in turn.
func fuzzBatch(props []string) *batch.Batch {
	b := newBatch("t1", props...)
	for i := range b.Tenant {
		if i%2 == 1 {
			b.Tenant[i] = "t2"
		}
	}
	return b
}

// checkProjection checks the projection of b on doc is well formed.
func checkProjection(t *testing.T, b *batch.Batch, doc *Doc) {
	t.Helper()
	var cols map[string]*Col
	if doc != nil {
		cols = doc.Columns
	}
	require.Len(t, b.Conflicts, b.Len())
	require.Len(t, b.Unpromoted, b.Len())
	for _, c := range b.Conflicts {
		if c != "" {
			var m map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(c), &m), c)
		}
	}
	for _, u := range b.Unpromoted {
		require.True(t, slices.IsSorted(u))
	}
	names := make([]string, 0, len(b.Typed))
	for _, c := range b.Typed {
		names = append(names, c.Name)
		require.True(t, validColumn(c.Name), c.Name)
		require.NotNil(t, cols[c.Name], c.Name)
		require.Equal(t, cols[c.Name].Kind(), c.Kind)
		require.Equal(t, b.Len(), c.Rows(), c.Name)
		if c.Kind.IsArray() {
			total := 0
			for _, n := range c.Lens {
				total += int(n)
			}
			require.Len(t, c.ElemNull, total)
		}
	}
	require.True(t, slices.IsSorted(names))
	for name := range cols {
		require.True(t, validColumn(name), name)
	}
}
