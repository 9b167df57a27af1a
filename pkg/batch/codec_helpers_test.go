package batch_test

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
)

// scalarCol makes a scalar column of one value per row, nil for NULL:
// bool, int64 (or int), float64, string or time.Time (datetime).
func scalarCol(name string, kind batch.Kind, rows ...any) batch.Column {
	c := batch.Column{Name: name, Kind: kind}
	for _, v := range rows {
		if v == nil {
			c.AppendNull()
			continue
		}
		c.Null = append(c.Null, false)
		appendValue(&c, v)
	}
	return c
}

// arrayCol makes a column of arrays of elem, one slice of elements per
// row (nil elements are NULL, an empty or nil row the empty array).
func arrayCol(name string, elem batch.Kind, rows ...[]any) batch.Column {
	c := batch.Column{Name: name, Kind: batch.ArrayOf(elem)}
	for _, elems := range rows {
		c.Lens = append(c.Lens, uint32(len(elems)))
		for _, v := range elems {
			c.ElemNull = append(c.ElemNull, v == nil)
			appendValue(&c, v)
		}
	}
	return c
}

// appendValue appends v to the values of c, the zero value when nil.
func appendValue(c *batch.Column, v any) {
	switch v := v.(type) {
	case nil:
		switch c.Kind.Elem() {
		case batch.Float64:
			c.Floats = append(c.Floats, 0)
		case batch.String:
			c.Strs = append(c.Strs, "")
		default:
			c.Ints = append(c.Ints, 0)
		}
	case bool:
		var i int64
		if v {
			i = 1
		}
		c.Ints = append(c.Ints, i)
	case int:
		c.Ints = append(c.Ints, int64(v))
	case int64:
		c.Ints = append(c.Ints, v)
	case float64:
		c.Floats = append(c.Floats, v)
	case string:
		c.Strs = append(c.Strs, v)
	case time.Time:
		c.Ints = append(c.Ints, v.UnixMicro())
	default:
		panic("no column value for " + c.Kind.String())
	}
}

// requireSameBatch compares batches with float values by their bits, so
// NaN equals itself and -0 does not equal 0: the codec must keep them.
func requireSameBatch(t *testing.T, want, got *batch.Batch) {
	t.Helper()
	wantRest, wantBits := splitFloats(want)
	gotRest, gotBits := splitFloats(got)
	require.Equal(t, wantBits, gotBits, "float bits")
	require.Equal(t, wantRest, gotRest)
}

// splitFloats returns a copy of b without float values, and their bits.
func splitFloats(b *batch.Batch) (*batch.Batch, [][]uint64) {
	rest := *b
	rest.Typed = slices.Clone(b.Typed)
	var bits [][]uint64
	for i := range rest.Typed {
		var col []uint64
		for _, f := range rest.Typed[i].Floats {
			col = append(col, math.Float64bits(f))
		}
		bits = append(bits, col)
		rest.Typed[i].Floats = nil
	}
	return &rest, bits
}
