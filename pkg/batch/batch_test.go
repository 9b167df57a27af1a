package batch_test

import (
	"math"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
)

// TestProjectedAfterWithout checks that the rows After and Without keep
// carry their own conflicts, unpromoted paths and typed values, that a
// typed column left with no value is dropped, and that the result still
// encodes. goldenV2's messages are 41 (rows e0, e1), 44 (e2, e3) and 47
// (e4); seen_at has values only in 41's rows, name only in 44's.
func TestProjectedAfterWithout(t *testing.T) {
	all := []string{"count", "flag", "flags", "ids", "name", "ratio", "scores", "seen_at", "tags"}
	for _, tt := range []struct {
		name    string
		cut     func(b *batch.Batch) *batch.Batch
		rows    []string
		columns []string
	}{
		{"after nothing", func(b *batch.Batch) *batch.Batch { return b.After(40) }, []string{"e0", "e1", "e2", "e3", "e4"}, all},
		{"after the first message", func(b *batch.Batch) *batch.Batch { return b.After(41) },
			[]string{"e2", "e3", "e4"}, []string{"count", "flag", "flags", "ids", "name", "ratio", "scores", "tags"}},
		{"after the second", func(b *batch.Batch) *batch.Batch { return b.After(44) },
			[]string{"e4"}, []string{"count", "flags", "ratio", "scores"}},
		{"after all", func(b *batch.Batch) *batch.Batch { return b.After(47) }, nil, nil},
		{"without nothing", func(b *batch.Batch) *batch.Batch { return b.Without(nil) }, []string{"e0", "e1", "e2", "e3", "e4"}, all},
		{"without the middle", func(b *batch.Batch) *batch.Batch { return b.Without(seqs(44)) },
			[]string{"e0", "e1", "e4"}, []string{"count", "flag", "flags", "ids", "ratio", "scores", "seen_at", "tags"}},
		{"without the ends", func(b *batch.Batch) *batch.Batch { return b.Without(seqs(41, 47)) },
			[]string{"e2", "e3"}, []string{"count", "flag", "flags", "ids", "name", "ratio", "scores", "tags"}},
		{"without all", func(b *batch.Batch) *batch.Batch { return b.Without(seqs(41, 44, 47)) }, nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := goldenV2()
			got := tt.cut(b)
			require.True(t, got.Projected())
			require.Equal(t, len(tt.rows), got.Len())
			require.Equal(t, tt.rows, append([]string(nil), got.EventID...))
			require.Len(t, got.Conflicts, got.Len())
			require.Len(t, got.Unpromoted, got.Len())

			var names []string
			for _, c := range got.Typed {
				names = append(names, c.Name)
				require.Equal(t, got.Len(), c.Rows(), "rows of %s", c.Name)
			}
			require.Equal(t, tt.columns, names)

			// Each row holds what the same event held in b.
			for i, id := range got.EventID {
				from := slices.Index(b.EventID, id)
				require.Equal(t, b.Seq[from], got.Seq[i], "seq of %s", id)
				require.Equal(t, b.Conflicts[from], got.Conflicts[i], "conflicts of %s", id)
				require.Equal(t, b.Unpromoted[from], got.Unpromoted[i], "unpromoted of %s", id)
				for _, orig := range b.Typed {
					want := rowValue(&orig, from)
					j := slices.Index(names, orig.Name)
					if j < 0 {
						require.Contains(t, []any{nil, []any(nil)}, want, "%s of %s is dropped", orig.Name, id)
						continue
					}
					require.Equal(t, want, rowValue(&got.Typed[j], i), "%s of %s", orig.Name, id)
				}
			}

			if got.Len() > 0 {
				again, err := batch.Decode(batch.Encode(got))
				require.NoError(t, err)
				requireSameBatch(t, got, again)
			}
			requireSameBatch(t, goldenV2(), b) // b itself is untouched
		})
	}
}

func seqs(s ...uint64) map[uint64]struct{} {
	out := map[uint64]struct{}{}
	for _, v := range s {
		out[v] = struct{}{}
	}
	return out
}

// rowValue is row r of c: nil for NULL, the value, or for an array column
// its elements (nil for the empty array). Floats are their bits, so NaN
// compares equal to itself.
func rowValue(c *batch.Column, r int) any {
	if !c.Kind.IsArray() {
		if c.Null[r] {
			return nil
		}
		return slotValue(c, r)
	}
	start := 0
	for _, n := range c.Lens[:r] {
		start += int(n)
	}
	var out []any
	for e := start; e < start+int(c.Lens[r]); e++ {
		if c.ElemNull[e] {
			out = append(out, nil)
			continue
		}
		out = append(out, slotValue(c, e))
	}
	return out
}

func slotValue(c *batch.Column, i int) any {
	switch c.Kind.Elem() {
	case batch.Float64:
		return math.Float64bits(c.Floats[i])
	case batch.String:
		return c.Strs[i]
	default:
		return c.Ints[i]
	}
}
