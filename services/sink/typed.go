package sink

import (
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
)

// typedInsert is a typed column as the insert appends it: its values in
// the form the driver appends for the column's type in the table.
type typedInsert struct {
	name   string
	values any
}

// convertTyped converts b's typed columns to what the driver appends for
// each column's actual type in the table (types: name -> ClickHouse type,
// as system.columns says), and returns them with the rows' _conflicts.
//
// The batch's kinds match the types the sink creates; a column an
// operator changed by hand (Int64 to String, say) gets the values its type
// holds without loss (anything as text into a String column, an integral
// float into an integer column, a datetime of whole seconds into DateTime,
// ...). A value that does not fit is left out of its column (NULL, an
// empty array, or the zero value of a column that is not Nullable) and
// put into its row's _conflicts, keyed by its property's JSON Pointer
// (path; the column's name when the registry does not say), with its
// original JSON from properties (or the batch's value where properties do
// not have it). A column whose type the sink cannot fill, or whose name
// could not be put in DDL, is left out of the insert, all its values in
// _conflicts. The result depends only on b and types.
func convertTyped(b *batch.Batch, types map[string]string, path func(name string) string) ([]typedInsert, []string) {
	var out []typedInsert
	var bad map[int][]conflict // by row
	misfit := func(c *batch.Column, rows []int) {
		if len(rows) == 0 {
			return
		}
		if bad == nil {
			bad = make(map[int][]conflict)
		}
		p := path(c.Name)
		key := p
		if key == "" {
			key = c.Name
		}
		offs := offsets(c)
		for _, r := range rows {
			bad[r] = append(bad[r], conflict{key: key, value: originalValue(b.Properties[r], p, c, r, offs)})
		}
	}
	for i := range b.Typed {
		c := &b.Typed[i]
		t, ok := parseColumnType(types[c.Name])
		var values any
		var rows []int
		if ok && schema.ValidColumn(c.Name) {
			values = convertColumn(c, t, func(row int) { rows = append(rows, row) })
		}
		if values == nil {
			misfit(c, rowsWithValue(c))
			continue
		}
		out = append(out, typedInsert{name: c.Name, values: values})
		misfit(c, rows)
	}
	conflicts := b.Conflicts
	if len(bad) > 0 {
		if conflicts == nil {
			conflicts = make([]string, b.Len())
		} else {
			conflicts = slices.Clone(conflicts)
		}
		for r, cs := range bad {
			conflicts[r] = mergeConflicts(conflicts[r], cs)
		}
	}
	return out, conflicts
}

// rowsWithValue are the rows of c holding a value: not NULL, or an array
// that is not empty.
func rowsWithValue(c *batch.Column) []int {
	var out []int
	for r := range c.Rows() {
		if c.Kind.IsArray() && c.Lens[r] > 0 || !c.Kind.IsArray() && !c.Null[r] {
			out = append(out, r)
		}
	}
	return out
}

// offsets are the element offsets of an array column's rows (nil for a
// scalar column): row r's elements are offs[r]..offs[r+1].
func offsets(c *batch.Column) []int {
	if !c.Kind.IsArray() {
		return nil
	}
	offs := make([]int, len(c.Lens)+1)
	for i, n := range c.Lens {
		offs[i+1] = offs[i] + int(n)
	}
	return offs
}

// columnType is a ClickHouse column type the sink fills.
type columnType struct {
	// base is Int8..Int64, UInt8..UInt64, Float32, Float64, String, Bool,
	// DateTime or DateTime64.
	base string
	// precision is DateTime64's.
	precision int
	// nullable says the values (an array's elements) may be NULL;
	// lowCard that they are LowCardinality.
	nullable, lowCard bool
	array             bool
}

var (
	dateTimeOf   = regexp.MustCompile(`^DateTime(\('[^']*'\))?$`)
	dateTime64Of = regexp.MustCompile(`^DateTime64\(([0-9])(, ?'[^']*')?\)$`)
)

// parseColumnType reads a type as system.columns writes it; false for one
// the sink does not fill.
func parseColumnType(t string) (columnType, bool) {
	var c columnType
	if inner, ok := strings.CutPrefix(t, "Array("); ok && strings.HasSuffix(inner, ")") {
		c.array = true
		t = inner[:len(inner)-1]
	}
	for {
		if inner, ok := strings.CutPrefix(t, "LowCardinality("); ok && strings.HasSuffix(inner, ")") {
			c.lowCard, t = true, inner[:len(inner)-1]
			continue
		}
		if inner, ok := strings.CutPrefix(t, "Nullable("); ok && strings.HasSuffix(inner, ")") {
			c.nullable, t = true, inner[:len(inner)-1]
			continue
		}
		break
	}
	switch t {
	case "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64", "String", "Bool":
		c.base = t
	default:
		if dateTimeOf.MatchString(t) {
			c.base = "DateTime"
		} else if m := dateTime64Of.FindStringSubmatch(t); m != nil {
			c.base = "DateTime64"
			c.precision, _ = strconv.Atoi(m[1])
		} else {
			return c, false
		}
	}
	if c.lowCard && c.base != "String" {
		return c, false // LowCardinality of other types: never made by Surge
	}
	return c, true
}

// convertColumn is c's values for a column of type t, or nil when none
// of them can go there. bad is told each row whose value does not fit.
func convertColumn(c *batch.Column, t columnType, bad func(row int)) any {
	if c.Kind.IsArray() && !t.array {
		if t.base != "String" {
			return nil
		}
		return arrayText(c, t)
	}
	if t.array && !c.Kind.IsArray() {
		return nil
	}
	switch t.base {
	case "Int8":
		return build(c, t, intConv[int8](c, math.MinInt8, math.MaxInt8), bad)
	case "Int16":
		return build(c, t, intConv[int16](c, math.MinInt16, math.MaxInt16), bad)
	case "Int32":
		return build(c, t, intConv[int32](c, math.MinInt32, math.MaxInt32), bad)
	case "Int64":
		return build(c, t, intConv[int64](c, math.MinInt64, math.MaxInt64), bad)
	case "UInt8":
		return build(c, t, uintConv[uint8](c, math.MaxUint8), bad)
	case "UInt16":
		return build(c, t, uintConv[uint16](c, math.MaxUint16), bad)
	case "UInt32":
		return build(c, t, uintConv[uint32](c, math.MaxUint32), bad)
	case "UInt64":
		return build(c, t, uintConv[uint64](c, math.MaxUint64), bad)
	case "Float32":
		return build(c, t, floatConv[float32](c, 1<<24), bad)
	case "Float64":
		return build(c, t, floatConv[float64](c, 1<<53), bad)
	case "Bool":
		return build(c, t, boolConv(c), bad)
	case "DateTime":
		return epochForZero(build(c, t, timeConv(c, 0, minDateTime, maxDateTime), bad))
	case "DateTime64":
		return epochForZero(build(c, t, timeConv(c, t.precision, minDateTime64, maxDateTime64), bad))
	}
	if t.lowCard {
		return buildAny(c, t, stringConv(c), bad)
	}
	return build(c, t, stringConv(c), bad)
}

// build is c's values converted by conv (value index -> value, fits) as
// the driver appends them for t: []T or []*T, [][]T or [][]*T.
func build[T any](c *batch.Column, t columnType, conv func(i int) (T, bool), bad func(row int)) any {
	if conv == nil {
		return nil
	}
	if !c.Kind.IsArray() {
		n := c.Rows()
		if !t.nullable {
			vals := make([]T, n)
			for i := range n {
				if !c.Null[i] {
					if v, ok := conv(i); ok {
						vals[i] = v
					} else {
						bad(i)
					}
				}
			}
			return vals
		}
		// The values sit side by side, one for each row that has one: a
		// sparse column (most of a wide table's) takes a pointer a row,
		// not a value a row as well.
		held := 0
		for _, null := range c.Null {
			if !null {
				held++
			}
		}
		vals := make([]T, 0, held)
		out := make([]*T, n)
		for i := range n {
			if !c.Null[i] {
				if v, ok := conv(i); ok {
					vals = append(vals, v) // within its capacity: the pointers stay
					out[i] = &vals[len(vals)-1]
				} else {
					bad(i)
				}
			}
		}
		return out
	}
	vals := make([]T, len(c.ElemNull))
	var ptrs []*T
	if t.nullable {
		ptrs = make([]*T, len(c.ElemNull))
	}
	rows := make([][]T, len(c.Lens))
	var prows [][]*T
	if t.nullable {
		prows = make([][]*T, len(c.Lens))
	}
	e := 0
	for r, n := range c.Lens {
		end := e + int(n)
		fits := true
		for i := e; i < end && fits; i++ {
			switch {
			case c.ElemNull[i]:
				fits = t.nullable // a NULL element has no place in Array(T)
			default:
				v, ok := conv(i)
				vals[i], fits = v, ok
				if ok && t.nullable {
					ptrs[i] = &vals[i]
				}
			}
		}
		switch {
		case !fits:
			bad(r)
		case t.nullable:
			prows[r] = ptrs[e:end:end]
		default:
			rows[r] = vals[e:end:end]
		}
		e = end
	}
	if t.nullable {
		return prows
	}
	return rows
}

// epochForZero puts 1970-01-01 in place of the zero time (NULLs and
// misfits in a column that is not Nullable): the driver refuses a time
// before it, a permanent failure.
func epochForZero(values any) any {
	if ts, ok := values.([]time.Time); ok {
		for i := range ts {
			if ts[i].IsZero() {
				ts[i] = time.Unix(0, 0).UTC()
			}
		}
	}
	return values
}

// buildAny is build for LowCardinality(Nullable(String)), which the
// driver takes as values (any: a string or nil) to index them by value.
func buildAny(c *batch.Column, t columnType, conv func(i int) (string, bool), bad func(row int)) any {
	if conv == nil {
		return nil
	}
	var zero any // what a NULL or a misfit becomes
	if !t.nullable {
		zero = ""
	}
	if !c.Kind.IsArray() {
		out := make([]any, c.Rows())
		for i := range out {
			out[i] = zero
			if c.Null[i] {
				continue
			}
			if v, ok := conv(i); ok {
				out[i] = v
			} else {
				bad(i)
			}
		}
		return out
	}
	out := make([][]any, len(c.Lens))
	e := 0
	for r, n := range c.Lens {
		row := make([]any, n)
		for j := range row {
			v, ok := conv(e + j)
			switch {
			case c.ElemNull[e+j] && t.nullable:
				continue
			case c.ElemNull[e+j] || !ok:
				row = nil
				bad(r)
			default:
				row[j] = v
			}
			if row == nil {
				break
			}
		}
		out[r] = row
		e += int(n)
	}
	return out
}

// arrayText is an array column as JSON text, for a String column an
// operator made of it; an empty array is NULL ("" when not Nullable).
func arrayText(c *batch.Column, t columnType) any {
	offs := offsets(c)
	texts := make([]string, c.Rows())
	for r := range texts {
		if c.Lens[r] > 0 {
			texts[r] = string(rowJSON(c, r, offs))
		}
	}
	if t.lowCard {
		out := make([]any, len(texts))
		for r, s := range texts {
			if s != "" || !t.nullable {
				out[r] = s
			}
		}
		return out
	}
	if !t.nullable {
		return texts
	}
	out := make([]*string, len(texts))
	for r := range texts {
		if c.Lens[r] > 0 {
			out[r] = &texts[r]
		}
	}
	return out
}

// intConv converts to a signed integer type of range lo..hi: integers in
// range, integral floats in range, and numeric strings that read back
// the same ("42", not "042").
func intConv[T int8 | int16 | int32 | int64](c *batch.Column, lo, hi int64) func(int) (T, bool) {
	switch c.Kind.Elem() {
	case batch.Int64:
		return func(i int) (T, bool) { v := c.Ints[i]; return T(v), v >= lo && v <= hi }
	case batch.Float64:
		return func(i int) (T, bool) {
			v, ok := floatToInt(c.Floats[i])
			return T(v), ok && v >= lo && v <= hi
		}
	case batch.String:
		return func(i int) (T, bool) {
			v, err := strconv.ParseInt(c.Strs[i], 10, 64)
			return T(v), err == nil && strconv.FormatInt(v, 10) == c.Strs[i] && v >= lo && v <= hi
		}
	}
	return nil
}

// uintConv converts to an unsigned integer type of maximum hi: as
// intConv, and a bool into UInt8, how 18.16 holds one.
func uintConv[T uint8 | uint16 | uint32 | uint64](c *batch.Column, hi uint64) func(int) (T, bool) {
	switch c.Kind.Elem() {
	case batch.Bool:
		if hi != math.MaxUint8 {
			return nil
		}
		return func(i int) (T, bool) { return T(c.Ints[i]), c.Ints[i] == 0 || c.Ints[i] == 1 }
	case batch.Int64:
		return func(i int) (T, bool) { v := c.Ints[i]; return T(v), v >= 0 && uint64(v) <= hi }
	case batch.Float64:
		return func(i int) (T, bool) {
			f := c.Floats[i]
			if f != math.Trunc(f) || f < 0 || f >= 1<<64 {
				return 0, false
			}
			return T(f), uint64(f) <= hi
		}
	case batch.String:
		return func(i int) (T, bool) {
			v, err := strconv.ParseUint(c.Strs[i], 10, 64)
			return T(v), err == nil && strconv.FormatUint(v, 10) == c.Strs[i] && v <= hi
		}
	}
	return nil
}

// floatToInt is f as an int64 when f is integral and in range.
func floatToInt(f float64) (int64, bool) {
	if f != math.Trunc(f) || f < -(1<<63) || f >= 1<<63 {
		return 0, false
	}
	return int64(f), true
}

// floatConv converts to a float type holding every integer up to exact
// exactly: floats it holds exactly, integers up to exact, and numeric
// strings that read back the same ("4.2", not "4.20").
func floatConv[T float32 | float64](c *batch.Column, exact int64) func(int) (T, bool) {
	switch c.Kind.Elem() {
	case batch.Float64:
		return func(i int) (T, bool) { f := c.Floats[i]; return T(f), float64(T(f)) == f }
	case batch.Int64:
		return func(i int) (T, bool) { v := c.Ints[i]; return T(v), v >= -exact && v <= exact }
	case batch.String:
		return func(i int) (T, bool) {
			f, err := strconv.ParseFloat(c.Strs[i], 64)
			return T(f), err == nil && strconv.FormatFloat(f, 'f', -1, 64) == c.Strs[i] && float64(T(f)) == f
		}
	}
	return nil
}

// boolConv converts bools only: a number or a string in a Bool column is
// a conflict, as the batcher has it.
func boolConv(c *batch.Column) func(int) (bool, bool) {
	if c.Kind.Elem() != batch.Bool {
		return nil
	}
	return func(i int) (bool, bool) { return c.Ints[i] == 1, c.Ints[i] == 0 || c.Ints[i] == 1 }
}

// stringConv converts anything to its text: a bool as true or false, a
// number as JSON writes it, a datetime in RFC 3339.
func stringConv(c *batch.Column) func(int) (string, bool) {
	switch c.Kind.Elem() {
	case batch.String:
		return func(i int) (string, bool) { return c.Strs[i], true }
	case batch.Int64:
		return func(i int) (string, bool) { return strconv.FormatInt(c.Ints[i], 10), true }
	case batch.Float64:
		return func(i int) (string, bool) { return string(appendJSONFloat(nil, c.Floats[i])), true }
	case batch.Bool:
		return func(i int) (string, bool) { return strconv.FormatBool(c.Ints[i] == 1), true }
	case batch.DateTime:
		return func(i int) (string, bool) { return formatTime(c.Ints[i]), true }
	}
	return nil
}

// The ranges the driver accepts (it refuses others, a permanent failure).
var (
	minDateTime   = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	maxDateTime   = time.Date(2105, 12, 31, 23, 59, 59, 0, time.UTC).UnixMicro()
	minDateTime64 = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	maxDateTime64 = time.Date(2262, 4, 11, 23, 47, 16, 0, time.UTC).UnixMicro()
)

// timeConv converts datetimes (unix microseconds) to a type of precision
// digits after the second within lo..hi: those it holds exactly.
func timeConv(c *batch.Column, precision int, lo, hi int64) func(int) (time.Time, bool) {
	if c.Kind.Elem() != batch.DateTime {
		return nil
	}
	unit := int64(1)
	for p := precision; p < 6; p++ {
		unit *= 10
	}
	return func(i int) (time.Time, bool) {
		us := c.Ints[i]
		return time.UnixMicro(us).UTC(), us%unit == 0 && us >= lo && us <= hi
	}
}

func formatTime(us int64) string { return time.UnixMicro(us).UTC().Format(time.RFC3339Nano) }
