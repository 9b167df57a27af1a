package sink

import (
	"bytes"
	"cmp"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
)

// conflict is a value left out of its typed column, for its row's
// _conflicts: its key (the property's JSON Pointer) and its JSON.
type conflict struct {
	key   string
	value []byte
}

// mergeConflicts adds add to a row's _conflicts, a compact JSON object
// keyed by JSON Pointer ("" for none), and returns it with its keys in
// byte order, as the batcher writes it: the same input gives the same
// bytes. A key already there keeps its value (the batcher's, from the
// client's JSON). A _conflicts that is not a JSON object (never written by
// Surge) is kept whole, as a string under the key "".
func mergeConflicts(existing string, add []conflict) string {
	type entry struct {
		key string
		raw []byte // "key":value
	}
	var entries []entry
	have := make(map[string]bool)
	if existing != "" {
		fields, ok := objectFields(existing)
		if !ok {
			fields = []field{{key: "", raw: append(append(schema.AppendJSONString(nil, ""), ':'), schema.AppendJSONString(nil, existing)...)}}
		}
		for _, f := range fields {
			entries = append(entries, entry{key: f.key, raw: f.raw})
			have[f.key] = true
		}
	}
	for _, c := range add {
		if have[c.key] {
			continue
		}
		have[c.key] = true
		raw := append(schema.AppendJSONString(nil, c.key), ':')
		entries = append(entries, entry{key: c.key, raw: append(raw, c.value...)})
	}
	slices.SortStableFunc(entries, func(a, b entry) int { return cmp.Compare(a.key, b.key) })
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range entries {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(e.raw)
	}
	b.WriteByte('}')
	return b.String()
}

// field is one member of a JSON object: its key, and its text as written
// ("key":value, compacted).
type field struct {
	key string
	raw []byte
}

// objectFields reads the members of a JSON object, keeping each one's
// bytes; false when s is no object.
func objectFields(s string) ([]field, bool) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	var out []field
	for dec.More() {
		start := dec.InputOffset()
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return nil, false
		}
		keyText := strings.TrimLeft(s[start:dec.InputOffset()], ", \t\r\n")
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, false
		}
		var raw bytes.Buffer
		raw.WriteString(keyText)
		raw.WriteByte(':')
		if err := json.Compact(&raw, value); err != nil {
			return nil, false
		}
		out = append(out, field{key: key, raw: raw.Bytes()})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, false
	}
	if _, err := dec.Token(); err == nil {
		return nil, false // more after the object
	}
	return out, true
}

// originalValue is the JSON of row r's value of column c for _conflicts:
// the property's own JSON at pointer in the row's properties when found
// there, else the batch's value (offs: c's element offsets).
func originalValue(properties, pointer string, c *batch.Column, r int, offs []int) []byte {
	if pointer != "" {
		if raw, ok := valueAt(properties, pointer); ok {
			return raw
		}
	}
	return rowJSON(c, r, offs)
}

// valueAt is the compact JSON of the value at pointer (RFC 6901, object
// keys only) in the JSON object doc. Of duplicate keys the last counts,
// as the batcher reads them.
func valueAt(doc, pointer string) ([]byte, bool) {
	if !strings.HasPrefix(pointer, "/") {
		return nil, false
	}
	cur := json.RawMessage(doc)
	for _, seg := range strings.Split(pointer[1:], "/") {
		seg = strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(cur, &obj); err != nil {
			return nil, false
		}
		v, ok := obj[seg]
		if !ok {
			return nil, false
		}
		cur = v
	}
	var out bytes.Buffer
	if err := json.Compact(&out, cur); err != nil {
		return nil, false
	}
	return out.Bytes(), true
}

// rowJSON is row r's value of column c as JSON (offs: c's element
// offsets, for an array).
func rowJSON(c *batch.Column, r int, offs []int) []byte {
	if !c.Kind.IsArray() {
		if c.Null[r] {
			return []byte("null")
		}
		return valueJSON(nil, c, r)
	}
	out := []byte{'['}
	for i := offs[r]; i < offs[r+1]; i++ {
		if i > offs[r] {
			out = append(out, ',')
		}
		if c.ElemNull[i] {
			out = append(out, "null"...)
		} else {
			out = valueJSON(out, c, i)
		}
	}
	return append(out, ']')
}

// valueJSON appends value i of column c as JSON.
func valueJSON(dst []byte, c *batch.Column, i int) []byte {
	switch c.Kind.Elem() {
	case batch.Bool:
		return strconv.AppendBool(dst, c.Ints[i] == 1)
	case batch.Int64:
		return strconv.AppendInt(dst, c.Ints[i], 10)
	case batch.Float64:
		return appendJSONFloat(dst, c.Floats[i])
	case batch.DateTime:
		return schema.AppendJSONString(dst, formatTime(c.Ints[i]))
	}
	return schema.AppendJSONString(dst, c.Strs[i])
}

// appendJSONFloat appends f as encoding/json writes it.
func appendJSONFloat(dst []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' { // e-07 -> e-7, as encoding/json
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}
