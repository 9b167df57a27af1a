package batch

import (
	"fmt"
	"slices"
)

// Kind is the logical type of a typed property column: what its values
// are, whatever ClickHouse type holds them on a given server version
// (package schema maps kinds to DDL).
type Kind uint8

// The scalar kinds. An array kind is ArrayOf(scalar).
const (
	// Bool values are in Ints, 0 or 1 (UInt8 on 18.16, Bool where it exists).
	Bool Kind = 1
	// Int64 values are in Ints.
	Int64 Kind = 2
	// Float64 values are in Floats.
	Float64 Kind = 3
	// String values are in Strs. Objects and arrays that fit no other kind
	// are held as their compact JSON text.
	String Kind = 4
	// DateTime values are in Ints, unix microseconds UTC.
	DateTime Kind = 5

	arrayFlag Kind = 0x80
)

// ArrayOf is the kind of an array of elem (a scalar kind).
func ArrayOf(elem Kind) Kind { return arrayFlag | elem }

// IsArray reports whether k is an array kind.
func (k Kind) IsArray() bool { return k&arrayFlag != 0 }

// Elem is the scalar kind of k's values or elements.
func (k Kind) Elem() Kind { return k &^ arrayFlag }

// Valid reports whether k is a kind this package knows.
func (k Kind) Valid() bool {
	e := k.Elem()
	return e >= Bool && e <= DateTime && !(k.IsArray() && e == DateTime)
}

// String names the kind as the schema registry writes it: int64,
// array(string)...
func (k Kind) String() string {
	var s string
	switch k.Elem() {
	case Bool:
		s = "bool"
	case Int64:
		s = "int64"
	case Float64:
		s = "float64"
	case String:
		s = "string"
	case DateTime:
		s = "datetime"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
	if k.IsArray() {
		return "array(" + s + ")"
	}
	return s
}

// ParseKind is the inverse of Kind.String.
func ParseKind(s string) (Kind, error) {
	for _, k := range []Kind{Bool, Int64, Float64, String, DateTime} {
		if s == k.String() {
			return k, nil
		}
		if a := ArrayOf(k); a.Valid() && s == a.String() {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown column kind %q", s)
}

// Column is one typed property column of a batch: a value per row.
//
// A scalar column holds one value per row in the slice its kind names
// (Ints, Floats or Strs) and Null per row; a NULL row holds the zero value.
// An array column is never NULL (an absent array is empty): Lens holds each
// row's element count, the elements of every row follow each other in the
// slice of the element kind, and ElemNull says which elements are NULL.
type Column struct {
	Name string
	Kind Kind

	Null     []bool
	Lens     []uint32
	ElemNull []bool
	Ints     []int64
	Floats   []float64
	Strs     []string
}

// Rows is the number of rows the column holds.
func (c *Column) Rows() int {
	if c.Kind.IsArray() {
		return len(c.Lens)
	}
	return len(c.Null)
}

// values is the number of scalar values the column holds: rows for a
// scalar column, elements for an array.
func (c *Column) values() int {
	if c.Kind.IsArray() {
		return len(c.ElemNull)
	}
	return len(c.Null)
}

// AppendNull adds a NULL row (an empty array to an array column).
func (c *Column) AppendNull() {
	if c.Kind.IsArray() {
		c.Lens = append(c.Lens, 0)
		return
	}
	c.Null = append(c.Null, true)
	c.appendZero()
}

// AppendNulls adds n NULL rows (empty arrays) at once: a sparse column
// of a wide schema is mostly NULLs.
func (c *Column) AppendNulls(n int) {
	if n <= 0 {
		return
	}
	if c.Kind.IsArray() {
		c.Lens = grow(c.Lens, n)
		return
	}
	at := len(c.Null)
	c.Null = grow(c.Null, n)
	for i := at; i < len(c.Null); i++ {
		c.Null[i] = true
	}
	switch c.Kind.Elem() {
	case Float64:
		c.Floats = grow(c.Floats, n)
	case String:
		c.Strs = grow(c.Strs, n)
	default:
		c.Ints = grow(c.Ints, n)
	}
}

// grow is s with n zero values appended.
func grow[T any](s []T, n int) []T {
	s = slices.Grow(s, n)
	s = s[:len(s)+n]
	clear(s[len(s)-n:])
	return s
}

func (c *Column) appendZero() {
	switch c.Kind.Elem() {
	case Float64:
		c.Floats = append(c.Floats, 0)
	case String:
		c.Strs = append(c.Strs, "")
	default:
		c.Ints = append(c.Ints, 0)
	}
}

// pick returns the rows of c listed in rows, in order, as a new column.
func (c *Column) pick(rows []int) Column {
	out := Column{Name: c.Name, Kind: c.Kind}
	if !c.Kind.IsArray() {
		for _, r := range rows {
			out.Null = append(out.Null, c.Null[r])
			out.copyValue(c, r)
		}
		return out
	}
	// Element offsets of each row.
	offs := make([]int, len(c.Lens)+1)
	for i, n := range c.Lens {
		offs[i+1] = offs[i] + int(n)
	}
	for _, r := range rows {
		out.Lens = append(out.Lens, c.Lens[r])
		for e := offs[r]; e < offs[r+1]; e++ {
			out.ElemNull = append(out.ElemNull, c.ElemNull[e])
			out.copyValue(c, e)
		}
	}
	return out
}

func (c *Column) copyValue(from *Column, i int) {
	switch c.Kind.Elem() {
	case Float64:
		c.Floats = append(c.Floats, from.Floats[i])
	case String:
		c.Strs = append(c.Strs, from.Strs[i])
	default:
		c.Ints = append(c.Ints, from.Ints[i])
	}
}

// check reports a column whose slices disagree with rows.
func (c *Column) check(rows int) error {
	if !c.Kind.Valid() {
		return fmt.Errorf("column %q: invalid kind %d", c.Name, c.Kind)
	}
	if c.Rows() != rows {
		return fmt.Errorf("column %q: %d rows, batch has %d", c.Name, c.Rows(), rows)
	}
	n := c.values()
	if c.Kind.IsArray() {
		total := 0
		for _, l := range c.Lens {
			total += int(l)
		}
		if total != n {
			return fmt.Errorf("column %q: %d elements, lengths say %d", c.Name, n, total)
		}
	}
	var got int
	switch c.Kind.Elem() {
	case Float64:
		got = len(c.Floats)
	case String:
		got = len(c.Strs)
	default:
		got = len(c.Ints)
	}
	if got != n {
		return fmt.Errorf("column %q: %d values, want %d", c.Name, got, n)
	}
	return nil
}

// hasValue reports whether some row holds a value: a non-NULL scalar or a
// non-empty array.
func (c *Column) hasValue() bool {
	if c.Kind.IsArray() {
		return len(c.ElemNull) > 0
	}
	for _, null := range c.Null {
		if !null {
			return true
		}
	}
	return false
}
