package schema

import (
	"math"
	"regexp"
	"strconv"
	"time"

	"github.com/surge-events/surge/pkg/batch"
)

// classifyNumber types a number by its text s (at t in the text): an
// integer (no fraction or exponent) that fits int64 is one; a larger one
// stays its exact text (a float would round it); any other number is a
// float64 when finite, else its text too.
func classifyNumber(s string, integer bool, t span) value {
	if integer {
		if i, ok := smallInt(s); ok {
			return value{kind: vInt, infer: batch.Int64, bits: uint64(i), text: t}
		}
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return value{kind: vInt, infer: batch.Int64, bits: uint64(i), text: t}
		}
		return value{kind: vNumber, infer: batch.String, text: t}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return value{kind: vNumber, infer: batch.String, text: t}
	}
	return value{kind: vFloat, infer: batch.Float64, bits: floatBits(f), text: t}
}

// smallInt is s, a JSON integer (an optional minus, then digits), when it
// has at most 18 digits, which no int64 overflows: most integers of
// events, read without strconv's checks.
func smallInt(s string) (int64, bool) {
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		n = n*10 + int64(s[i]-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// arrayKind is the kind an array asks for: an array of its elements' kind
// when they are scalars of one kind (nulls aside; integers with floats are
// floats), its JSON text (String) when it holds objects, arrays or mixed
// kinds, and no type when it holds no typed element.
func arrayKind(elems []value) batch.Kind {
	var k batch.Kind
	for _, e := range elems {
		switch {
		case e.kind == vJSON:
			return batch.String
		case e.infer == 0:
		case k == 0:
			k = e.infer
		case k != e.infer:
			if !isNumeric(k) || !isNumeric(e.infer) {
				return batch.String
			}
			k = batch.Float64
		}
	}
	if k == 0 {
		return 0
	}
	return batch.ArrayOf(k)
}

// join is the kind of a column that must hold values of kinds a and b,
// losing nothing: integers with floats are floats, arrays join their
// elements, and anything else that differs is a string (every value has
// a lossless text). 0 is no type.
func join(a, b batch.Kind) batch.Kind {
	switch {
	case a == 0:
		return b
	case b == 0 || a == b:
		return a
	case a.IsArray() && b.IsArray():
		return batch.ArrayOf(joinScalar(a.Elem(), b.Elem()))
	case a.IsArray() || b.IsArray():
		return batch.String
	}
	return joinScalar(a, b)
}

func joinScalar(a, b batch.Kind) batch.Kind {
	switch {
	case a == b:
		return a
	case isNumeric(a) && isNumeric(b):
		return batch.Float64
	}
	return batch.String
}

func isNumeric(k batch.Kind) bool { return k == batch.Int64 || k == batch.Float64 }

// The coercions below put a value into a column of another kind only when
// nothing is lost; false means the value conflicts with the column.

// maxExactFloatInt is the largest integer magnitude a float64 holds
// exactly: 2^53.
const maxExactFloatInt = 1 << 53

// asInt is v in an Int64 column: an integer, an integral float in range
// (5.0), or a string that is exactly an integer's text ("42", not "042").
func (ps *Parsed) asInt(row int, v value) (int64, bool) {
	switch v.kind {
	case vInt:
		return v.int(), true
	case vFloat:
		return floatToInt(v.float())
	case vString:
		return exactInt(ps.textOf(row, v.text))
	}
	return 0, false
}

// asFloat is v in a Float64 column: a float, an integer within ±2^53, or a
// string that is exactly a number's text ("4.2", not "4.20").
func (ps *Parsed) asFloat(row int, v value) (float64, bool) {
	switch v.kind {
	case vFloat:
		return v.float(), true
	case vInt:
		return intToFloat(v.int())
	case vString:
		return exactFloat(ps.textOf(row, v.text))
	}
	return 0, false
}

// asBool is v in a Bool column (0 or 1): only true and false.
func asBool(v value) (int64, bool) {
	return v.int(), v.kind == vBool
}

// asString is v in a String column: a string as itself, anything else as
// its JSON text (2.50 stays "2.50", true is "true").
func (ps *Parsed) asString(row int, v value) string {
	switch v.kind {
	case vBool:
		if v.bits == 1 {
			return "true"
		}
		return "false"
	case vNull:
		return "null"
	}
	return ps.textOf(row, v.text)
}

// asTime is v in a DateTime column of the given sub-second digits, in unix
// microseconds: an RFC 3339 string with a zone, holding no finer part than
// the column keeps.
func (ps *Parsed) asTime(row int, v value, digits int) (int64, bool) {
	if v.kind != vString {
		return 0, false
	}
	t, err := time.Parse(time.RFC3339Nano, ps.textOf(row, v.text))
	if err != nil || t.Nanosecond()%pow10(9-digits) != 0 {
		return 0, false
	}
	return t.UnixMicro(), true
}

func floatToInt(f float64) (int64, bool) {
	if f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, false
	}
	return int64(f), true
}

func intToFloat(i int64) (float64, bool) {
	if i > maxExactFloatInt || i < -maxExactFloatInt {
		return 0, false
	}
	return float64(i), true
}

// exactInt parses s when strconv writes the integer back as s.
func exactInt(s string) (int64, bool) {
	i, err := strconv.ParseInt(s, 10, 64)
	var buf [24]byte
	return i, err == nil && string(strconv.AppendInt(buf[:0], i, 10)) == s
}

// exactFloat parses s when strconv writes the number back as s, in plain
// or exponent notation; an integer text must fit a float exactly.
func exactFloat(s string) (float64, bool) {
	if i, ok := exactInt(s); ok {
		return intToFloat(i)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, false
	}
	var buf [32]byte
	return f, string(strconv.AppendFloat(buf[:0], f, 'f', -1, 64)) == s ||
		string(strconv.AppendFloat(buf[:0], f, 'g', -1, 64)) == s
}

func pow10(n int) int {
	p := 1
	for range n {
		p *= 10
	}
	return p
}

var dateTime64 = regexp.MustCompile(`DateTime64\(\s*([0-9])`)

// timeDigits is how many sub-second digits a DateTime column of chType
// keeps: DateTime none, DateTime64(p) p, at most the 6 a batch holds. A
// column without a ClickHouse type keeps what the batch holds.
func timeDigits(chType string) int {
	if chType == "" {
		return 6
	}
	if m := dateTime64.FindStringSubmatch(chType); m != nil {
		return min(int(m[1][0]-'0'), 6)
	}
	return 0
}
