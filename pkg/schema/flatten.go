package schema

import (
	"strings"
	"unicode/utf8"

	"github.com/valyala/fastjson"

	"github.com/surge-events/surge/pkg/batch"
)

// Parsed is a batch's properties flattened: per row, its fields (a path
// and a value) in the order of the event's JSON. Values live in Parsed
// itself, not in the JSON parser, so one parser serves every row.
type Parsed struct {
	batch *batch.Batch
	// rowEnd[r] is the end of row r's fields in fields: a row's fields
	// follow the previous row's.
	rowEnd []int
	fields []field
	// elems are the elements of every array value.
	elems []value
	// text holds every string value, number text and JSON text of the
	// batch, so values are spans of it instead of a string each.
	text string
	// keys are the distinct paths of the batch, interior objects too.
	keys []key
}

func (ps *Parsed) rows() int { return len(ps.rowEnd) }

// tenant is the tenant of row r.
func (ps *Parsed) tenant(r int) string {
	if r < len(ps.batch.Tenant) {
		return ps.batch.Tenant[r]
	}
	return ""
}

// rowFields are row r's fields.
func (ps *Parsed) rowFields(r int) []field {
	start := 0
	if r > 0 {
		start = ps.rowEnd[r-1]
	}
	return ps.fields[start:ps.rowEnd[r]]
}

func (ps *Parsed) textOf(s span) string { return ps.text[s.at : s.at+s.n] }

func (ps *Parsed) elemsOf(v value) []value { return ps.elems[v.elems.at : v.elems.at+v.elems.n] }

// field is one flattened property of a row.
type field struct {
	key int32
	v   value
}

// key is one distinct path of a batch.
type key struct {
	pointer string
	seg     string // the last segment, unescaped
	parent  int32  // -1 at the top
	// context marks a promoted field below /_segment/context, named
	// context_*; the rest of /_segment never becomes a key.
	context bool
	denied  bool // a segment matches a deny pattern
	ignored bool // the path or one above it is ignored
	name    string

	// What the batch says of the path, counting only the rows where it is
	// among the event's first MaxKeysPerEvent keys and has a type: how many
	// rows, the join of their kinds, and the first such row.
	rows     int
	kind     batch.Kind
	firstRow int

	hasField bool // some row has a value at the path, not only below it
	lastRow  int  // the row that last reached the path: a second time is a duplicate key
	// first is the path of the first member of this object last time, and
	// next the path of the member after this one: guesses that spare most
	// lookups (see intern); -1 for none.
	first, next int32
}

// vkind says what a flattened value is in JSON terms.
type vkind uint8

const (
	vNull vkind = iota
	vBool
	vInt    // a number without . e E that fits int64
	vFloat  // any other finite number
	vNumber // a number that fits neither: kept as its exact text
	vString
	vJSON  // an object, or an array inside an array, as compact JSON text
	vArray // elements in Parsed.elems
)

// value is one flattened value.
type value struct {
	kind vkind
	// infer is the column kind the value asks for; 0 when it carries no
	// type (null, [], an array of nulls).
	infer batch.Kind
	i     int64   // vBool (0 or 1), vInt
	f     float64 // vFloat
	text  span    // vInt, vFloat, vNumber: the number's text; vString: the value; vJSON, vArray: the JSON
	elems span    // vArray
}

// span is a range of Parsed.text or Parsed.elems. 32 bits are plenty for
// a batch and keep a field at 48 bytes.
type span struct{ at, n uint32 }

// flattener turns a batch's properties into a Parsed, one row at a time.
type flattener struct {
	p      *Projector
	parser fastjson.Parser
	out    *Parsed
	ids    map[string]int32 // by pointer
	ptr    []byte           // a pointer to look up
	// rootFirst is the path of the first member of the last row: where
	// the next row likely starts (see intern).
	rootFirst int32
	text      strings.Builder
	scratch   []byte
	row       int
	// bad marks a row holding a number that is not JSON (the parser is
	// lenient with NaN, Inf and +1): such a row gets no fields, as if it did
	// not parse.
	bad bool
	// lastKeys is how many distinct paths its last batch had: the next
	// batch's keys are sized by it, as batches of one stream look alike.
	lastKeys int
}

// getFlattener is a flattener for out, from the pool: its parser and map
// keep their memory from batch to batch.
func (p *Projector) getFlattener(out *Parsed, sizeHint int) *flattener {
	f, ok := p.flatteners.Get().(*flattener)
	if !ok {
		f = &flattener{ids: make(map[string]int32)}
	}
	f.p, f.out, f.rootFirst = p, out, -1
	f.text.Grow(sizeHint)
	return f
}

// putFlattener returns f to the pool, holding nothing of its batch but
// its parser's copy of the last row.
func (p *Projector) putFlattener(f *flattener) {
	clear(f.ids)
	f.lastKeys = len(f.out.keys)
	f.out, f.text = nil, strings.Builder{} // the text is the Parsed's now
	p.flatteners.Put(f)
}

// addRow flattens one row's properties. Properties that are not a JSON
// object give no fields.
func (f *flattener) addRow(row int, props string) {
	f.row, f.bad = row, false
	start := len(f.out.fields)
	if v, err := f.parser.Parse(props); err == nil && v.Type() == fastjson.TypeObject {
		obj, _ := v.Object()
		f.walk(obj, -1, 0, nil)
	}
	if f.bad {
		f.out.fields = f.out.fields[:start]
	}
	f.out.rowEnd = append(f.out.rowEnd, len(f.out.fields))
	f.count(f.out.fields[start:])
}

// walk flattens the members of obj, the object at path parent of the
// given depth (segments). Below /_segment, tree lists the members followed.
func (f *flattener) walk(obj *fastjson.Object, parent int32, depth int, tree segmentTree) {
	prev := int32(-1)
	obj.Visit(func(k []byte, v *fastjson.Value) {
		if id := f.member(parent, prev, k, v, depth+1, tree); id >= 0 {
			prev = id
		}
	})
}

// member flattens one member of an object, after the member prev (-1 for
// the first): into its object's members while the depth allows, else into
// a field. It returns the member's path, or -1 for a member not followed.
func (f *flattener) member(parent, prev int32, k []byte, v *fastjson.Value, depth int, tree segmentTree) int32 {
	inSegment := tree != nil
	var sub segmentTree
	if inSegment {
		s, ok := tree[string(k)]
		if !ok {
			return -1
		}
		sub = s
	}
	id := f.intern(parent, prev, k, inSegment)
	if f.out.keys[id].ignored {
		return id
	}
	isObject := v.Type() == fastjson.TypeObject
	switch {
	case parent == -1 && string(k) == segmentKey:
		if isObject {
			obj, _ := v.Object()
			// Depth counts from below /_segment/context: context's members
			// are at depth 1, like top-level properties.
			f.walk(obj, id, -1, segmentFields)
		}
	case inSegment && sub == nil: // a promoted leaf: one field whatever it holds
		f.addField(id, v)
	case inSegment && !isObject: // an inner node holding no object: not promoted
	case isObject && depth < f.p.cfg.MaxDepth:
		obj, _ := v.Object()
		f.walk(obj, id, depth, sub)
	default:
		f.addField(id, v)
	}
	return id
}

// intern is the id of the path of member k of parent, after the member
// prev, adding it to the batch's keys the first time. Events of a batch
// mostly share their keys and order, so the member that followed prev
// last time is tried before the map of every path.
//
// A path reached twice in one row is a duplicate key: the last one wins,
// so what the first left is dropped.
func (f *flattener) intern(parent, prev int32, k []byte, inSegment bool) int32 {
	id := *f.hint(parent, prev)
	if id < 0 || f.out.keys[id].parent != parent || f.out.keys[id].seg != string(k) {
		id = f.lookup(parent, k, inSegment)
		*f.hint(parent, prev) = id // lookup may have moved the keys
	}
	if f.out.keys[id].lastRow == f.row {
		f.dropPath(f.out.keys[id].pointer)
	}
	f.out.keys[id].lastRow = f.row
	return id
}

// hint is where the guess of the member of parent after prev is kept.
func (f *flattener) hint(parent, prev int32) *int32 {
	switch {
	case prev >= 0:
		return &f.out.keys[prev].next
	case parent >= 0:
		return &f.out.keys[parent].first
	}
	return &f.rootFirst
}

// lookup is the id of the path of member k of parent by its pointer,
// adding it when new.
func (f *flattener) lookup(parent int32, k []byte, inSegment bool) int32 {
	f.ptr = f.ptr[:0]
	if parent >= 0 {
		f.ptr = append(f.ptr, f.out.keys[parent].pointer...)
	}
	segAt := len(f.ptr) + 1 // after the "/"
	f.ptr = appendPointerSegment(f.ptr, k)
	if id, ok := f.ids[string(f.ptr)]; ok {
		return id
	}
	id := int32(len(f.out.keys))
	f.out.keys = append(f.out.keys, f.newKey(parent, segAt, inSegment))
	f.ids[f.out.keys[id].pointer] = id
	return id
}

// newKey is the path in f.ptr, a member of parent whose segment starts at
// segAt in f.ptr, escaped.
func (f *flattener) newKey(parent int32, segAt int, inSegment bool) key {
	pointer := string(f.ptr)
	seg := pointer[segAt:] // the pointer's tail, shared, unless escaped
	if strings.IndexByte(seg, '~') >= 0 {
		seg = pointerUnescaper.Replace(seg)
	}
	k := key{pointer: pointer, seg: seg, parent: parent, lastRow: -1, first: -1, next: -1}
	if parent >= 0 {
		up := &f.out.keys[parent]
		k.ignored = up.ignored
		// Members of /_segment/context and below.
		k.context = up.context || (inSegment && up.seg == "context" && up.parent >= 0 && f.out.keys[up.parent].parent == -1)
	}
	k.ignored = k.ignored || f.p.ignore[k.pointer]
	return k
}

// dropPath removes the current row's fields at pointer or below it.
func (f *flattener) dropPath(pointer string) {
	start := 0
	if f.row > 0 {
		start = f.out.rowEnd[f.row-1]
	}
	kept := f.out.fields[:start]
	for _, fl := range f.out.fields[start:] {
		p := f.out.keys[fl.key].pointer
		if p == pointer || (strings.HasPrefix(p, pointer) && p[len(pointer)] == '/') {
			continue
		}
		kept = append(kept, fl)
	}
	f.out.fields = kept
}

func (f *flattener) addField(id int32, v *fastjson.Value) {
	f.out.keys[id].hasField = true
	f.out.fields = append(f.out.fields, field{key: id, v: f.value(v)})
}

// count adds a row's fields to what the batch says of their paths.
func (f *flattener) count(fields []field) {
	for i, fl := range fields {
		if i >= f.p.cfg.MaxKeysPerEvent {
			return
		}
		if fl.v.infer == 0 {
			continue
		}
		k := &f.out.keys[fl.key]
		if k.rows == 0 {
			k.firstRow = f.row
		}
		k.rows++
		k.kind = join(k.kind, fl.v.infer)
	}
}

// finish hands the text over to the Parsed, and names its paths and
// checks them against the deny patterns.
func (f *flattener) finish() {
	f.out.text = f.text.String()
	f.p.paths.resolve(f.out.keys, f.p.pathFacts)
}

// value flattens one JSON value. Objects here are at the depth limit and
// become their JSON text.
func (f *flattener) value(v *fastjson.Value) value {
	switch v.Type() {
	case fastjson.TypeTrue:
		return value{kind: vBool, infer: batch.Bool, i: 1}
	case fastjson.TypeFalse:
		return value{kind: vBool, infer: batch.Bool}
	case fastjson.TypeNumber:
		return f.number(v)
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return value{kind: vString, infer: batch.String, text: f.addText(s)}
	case fastjson.TypeObject:
		return value{kind: vJSON, infer: batch.String, text: f.addJSON(v)}
	case fastjson.TypeArray:
		return f.array(v)
	}
	return value{}
}

// number classifies a number by its text (see classifyNumber).
func (f *flattener) number(v *fastjson.Value) value {
	f.scratch = v.MarshalTo(f.scratch[:0])
	ok, integer := scanNumber(f.scratch)
	if !ok {
		f.bad = true
		return value{}
	}
	t := f.addText(f.scratch)
	return classifyNumber(f.text.String()[t.at:t.at+t.n], integer, t)
}

// array flattens an array's elements: scalars as themselves, objects and
// arrays as their JSON text. The array's own JSON text is kept too: arrays
// of objects or mixed kinds go to string columns whole.
func (f *flattener) array(v *fastjson.Value) value {
	items, _ := v.Array()
	at := len(f.out.elems)
	for _, item := range items {
		var e value
		switch item.Type() {
		case fastjson.TypeArray:
			e = value{kind: vJSON, infer: batch.String, text: f.addJSON(item)}
		default:
			e = f.value(item)
		}
		f.out.elems = append(f.out.elems, e)
	}
	return value{
		kind:  vArray,
		infer: arrayKind(f.out.elems[at:]),
		text:  f.addJSON(v),
		elems: span{at: uint32(at), n: uint32(len(items))},
	}
}

func (f *flattener) addText(b []byte) span {
	s := span{at: uint32(f.text.Len()), n: uint32(len(b))}
	f.text.Write(b)
	return s
}

func (f *flattener) addJSON(v *fastjson.Value) span {
	f.scratch = f.appendJSON(f.scratch[:0], v)
	return f.addText(f.scratch)
}

// appendJSON appends v as compact JSON. It does not use the parser's
// MarshalTo, which quotes unescaped strings the Go way (\x01 is no JSON).
// Duplicate keys are kept, as sent.
func (f *flattener) appendJSON(dst []byte, v *fastjson.Value) []byte {
	switch v.Type() {
	case fastjson.TypeObject:
		obj, _ := v.Object()
		dst = append(dst, '{')
		first := true
		obj.Visit(func(k []byte, m *fastjson.Value) {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = AppendJSONString(dst, string(k))
			dst = append(dst, ':')
			dst = f.appendJSON(dst, m)
		})
		return append(dst, '}')
	case fastjson.TypeArray:
		items, _ := v.Array()
		dst = append(dst, '[')
		for i, item := range items {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = f.appendJSON(dst, item)
		}
		return append(dst, ']')
	case fastjson.TypeString:
		s, _ := v.StringBytes()
		return AppendJSONString(dst, string(s))
	case fastjson.TypeNumber:
		at := len(dst)
		dst = v.MarshalTo(dst)
		if ok, _ := scanNumber(dst[at:]); !ok {
			f.bad = true
		}
		return dst
	case fastjson.TypeTrue:
		return append(dst, "true"...)
	case fastjson.TypeFalse:
		return append(dst, "false"...)
	}
	return append(dst, "null"...)
}

// appendValueJSON appends a flattened value as compact JSON: the text it
// came in, but for strings, which are escaped anew.
func (ps *Parsed) appendValueJSON(dst []byte, v value) []byte {
	switch v.kind {
	case vBool:
		if v.i == 1 {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case vInt, vFloat, vNumber, vJSON, vArray:
		return append(dst, ps.textOf(v.text)...)
	case vString:
		return AppendJSONString(dst, ps.textOf(v.text))
	}
	return append(dst, "null"...)
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string, as encoding/json writes it
// without HTML escaping: invalid UTF-8 becomes U+FFFD.
func AppendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// scanNumber reports whether b is a number as JSON writes one, and
// whether it is an integer's text (no fraction, no exponent).
func scanNumber(b []byte) (ok, integer bool) {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return false, false
	}
	integer = true
	if i < len(b) && b[i] == '.' {
		if i++; i == len(b) || !isDigit(b[i]) {
			return false, false
		}
		i, integer = skipDigits(b, i), false
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i == len(b) || !isDigit(b[i]) {
			return false, false
		}
		i, integer = skipDigits(b, i), false
	}
	return i == len(b), integer
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}
