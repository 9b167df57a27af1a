package batch_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
)

// TestAppendNulls: n NULLs at once are n AppendNull calls, for every
// kind, on an empty column and after values, and 0 adds none.
func TestAppendNulls(t *testing.T) {
	for _, kind := range []batch.Kind{batch.Int64, batch.Float64, batch.String, batch.Bool, batch.DateTime, batch.ArrayOf(batch.String)} {
		for _, n := range []int{0, 1, 3, 100} {
			one, bulk := batch.Column{Name: "p_x", Kind: kind}, batch.Column{Name: "p_x", Kind: kind}
			for _, c := range []*batch.Column{&one, &bulk} {
				c.AppendNull()
				c.Null = append(c.Null, false) // a value, left non-zero
				c.Ints, c.Floats, c.Strs = append(c.Ints, 7), append(c.Floats, 7), append(c.Strs, "7")
				if kind.IsArray() {
					c.Null, c.Ints, c.Floats = nil, nil, nil
					c.Lens, c.ElemNull = append(c.Lens, 1), []bool{false}
				}
			}
			for range n {
				one.AppendNull()
			}
			bulk.AppendNulls(n)
			require.Equal(t, one, bulk, "%v, %d", kind, n)
		}
	}
}
