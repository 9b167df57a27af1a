package schema

import (
	"math"
	"strings"
	"unicode/utf8"

	"github.com/surge-events/surge/pkg/batch"
)

// Parsed is a batch's properties flattened: per row, its fields (a path
// and a value) in the order of the event's JSON. Values are spans of
// Parsed's own text, not strings of their own.
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

// textOf is the text of s, a span of row's values: a part of the row's
// own properties, or of Parsed's text.
func (ps *Parsed) textOf(row int, s span) string {
	if s.at&inRow != 0 {
		at := s.at &^ inRow
		return ps.batch.Properties[row][at : at+s.n]
	}
	return ps.text[s.at : s.at+s.n]
}

func (ps *Parsed) elemsOf(v value) []value {
	e := v.elemSpan()
	return ps.elems[e.at : e.at+e.n]
}

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
	// bits holds vBool's 0 or 1 and vInt's int64, vFloat's float64 bits,
	// and vArray's span of Parsed.elems: one word keeps a field at 32 bytes,
	// and a batch holds a field for each of its properties.
	bits uint64
	text span // vInt, vFloat, vNumber: the number's text; vString: the value; vJSON, vArray: the JSON
}

func (v value) int() int64       { return int64(v.bits) }
func (v value) float() float64   { return math.Float64frombits(v.bits) }
func (v value) elemSpan() span   { return span{at: uint32(v.bits >> 32), n: uint32(v.bits)} }
func elemBits(at, n int) uint64  { return uint64(at)<<32 | uint64(uint32(n)) }
func floatBits(f float64) uint64 { return math.Float64bits(f) }

// span is a range of Parsed.elems, or of a row's text: with inRow set in
// at, of the row's own properties (what a value reads as it was sent,
// most of them), else of Parsed.text (unescaped strings, JSON written
// anew). 32 bits are plenty for a batch.
type span struct{ at, n uint32 }

// inRow marks a span of the row's properties.
const inRow = 1 << 31

// maxJSONDepth is the deepest nesting of a row's properties that is read
// (the root object is 1); a deeper row gives no fields.
const maxJSONDepth = 300

// flattener turns a batch's properties into a Parsed, one row at a time.
// It reads each row's JSON once, in order, straight into fields: building
// a parse tree first and walking it after (valyala/fastjson) took most of
// the projection's time.
type flattener struct {
	p   *Projector
	out *Parsed
	ids map[string]int32 // by pointer
	ptr []byte           // a pointer to look up
	// rootFirst is the path of the first member of the last row: where
	// the next row likely starts (see intern).
	rootFirst int32
	text      strings.Builder
	scratch   []byte
	unescaped []byte
	row       int
	// bad marks a row that is not JSON: it gets no fields and leaves no
	// paths, as if it had not been read.
	bad bool
	// flagged are the paths that had no field before the row gave them
	// one: a bad row takes that back.
	flagged []int32
}

// getFlattener is a flattener for out, from the pool: its buffers and
// map keep their memory from batch to batch.
func (p *Projector) getFlattener(out *Parsed) *flattener {
	f, ok := p.flatteners.Get().(*flattener)
	if !ok {
		f = &flattener{ids: make(map[string]int32, p.lastKeys.Load())}
	}
	f.p, f.out, f.rootFirst = p, out, -1
	return f
}

// putFlattener returns f to the pool, holding nothing of its batch.
func (p *Projector) putFlattener(f *flattener) {
	clear(f.ids)
	p.lastKeys.Store(int64(len(f.out.keys)))
	f.out, f.text = nil, strings.Builder{} // the text is the Parsed's now
	p.flatteners.Put(f)
}

// addRow flattens one row's properties. Properties that are not a JSON
// object give no fields.
func (f *flattener) addRow(row int, props string) {
	f.row, f.bad = row, false
	start, keysAt, elemsAt := len(f.out.fields), len(f.out.keys), len(f.out.elems)
	f.flagged = f.flagged[:0]
	r := reader{s: props}
	r.ws()
	if r.peek() == '{' {
		f.walk(&r, -1, 0, nil, 1)
		r.ws()
		f.bad = f.bad || r.i != len(r.s)
	}
	if f.bad {
		f.out.fields = f.out.fields[:start]
		f.forget(keysAt, elemsAt)
	}
	f.out.rowEnd = append(f.out.rowEnd, len(f.out.fields))
	f.count(f.out.fields[start:])
}

// forget takes back what a bad row left: the paths it added (and the
// guesses that lead to them), the fields it gave to older paths, and its
// array elements. Its text stays, unreferenced.
func (f *flattener) forget(keysAt, elemsAt int) {
	for _, id := range f.flagged {
		if int(id) < keysAt {
			f.out.keys[id].hasField = false
		}
	}
	if len(f.out.keys) > keysAt {
		for _, k := range f.out.keys[keysAt:] {
			delete(f.ids, k.pointer)
		}
		f.out.keys = f.out.keys[:keysAt]
		gone := func(id *int32) {
			if int(*id) >= keysAt {
				*id = -1
			}
		}
		for i := range f.out.keys {
			gone(&f.out.keys[i].first)
			gone(&f.out.keys[i].next)
		}
		gone(&f.rootFirst)
	}
	f.out.elems = f.out.elems[:elemsAt]
}

// walk flattens the members of the object at r, the object at path
// parent of the given depth (segments), nested jd deep in the row's JSON.
// Below /_segment, tree lists the members followed.
func (f *flattener) walk(r *reader, parent int32, depth int, tree segmentTree, jd int) {
	r.i++ // {
	r.ws()
	if r.consume('}') {
		return
	}
	prev := int32(-1)
	for {
		k, ok := f.key(r)
		if !ok {
			f.bad = true
			return
		}
		r.ws()
		if !r.consume(':') {
			f.bad = true
			return
		}
		r.ws()
		if id := f.member(r, parent, prev, k, depth+1, tree, jd+1); id >= 0 {
			prev = id
		}
		if f.bad {
			return
		}
		r.ws()
		if r.consume(',') {
			r.ws()
			continue
		}
		f.bad = !r.consume('}')
		return
	}
}

// key reads a member's name, unescaped.
func (f *flattener) key(r *reader) (string, bool) {
	if r.peek() != '"' {
		return "", false
	}
	raw, esc, ok := r.str()
	if !ok || !esc {
		return raw, ok
	}
	f.unescaped = unescape(f.unescaped[:0], raw)
	return string(f.unescaped), true
}

// member flattens one member of an object, its value at r, after the
// member prev (-1 for the first): into its object's members while the
// depth allows, else into a field. It returns the member's path, or -1
// for a member not followed. A value not followed is still read, so a
// row that is not JSON anywhere gives no fields.
func (f *flattener) member(r *reader, parent, prev int32, k string, depth int, tree segmentTree, jd int) int32 {
	if jd > maxJSONDepth {
		f.bad = true
		return -1
	}
	inSegment := tree != nil
	var sub segmentTree
	if inSegment {
		s, ok := tree[k]
		if !ok {
			f.skip(r, jd)
			return -1
		}
		sub = s
	}
	id := f.intern(parent, prev, k, inSegment)
	if f.out.keys[id].ignored {
		f.skip(r, jd)
		return id
	}
	isObject := r.peek() == '{'
	switch {
	case parent == -1 && k == segmentKey:
		if isObject {
			// Depth counts from below /_segment/context: context's members
			// are at depth 1, like top-level properties.
			f.walk(r, id, -1, segmentFields, jd)
		} else {
			f.skip(r, jd)
		}
	case inSegment && sub == nil: // a promoted leaf: one field whatever it holds
		f.addField(id, r, jd)
	case inSegment && !isObject: // an inner node holding no object: not promoted
		f.skip(r, jd)
	case isObject && depth < f.p.cfg.MaxDepth:
		f.walk(r, id, depth, sub, jd)
	default:
		f.addField(id, r, jd)
	}
	return id
}

// skip reads past the value at r, which must be JSON.
func (f *flattener) skip(r *reader, jd int) {
	if !r.skip(jd) {
		f.bad = true
	}
}

// intern is the id of the path of member k of parent, after the member
// prev, adding it to the batch's keys the first time. Events of a batch
// mostly share their keys and order, so the member that followed prev
// last time is tried before the map of every path.
//
// A path reached twice in one row is a duplicate key: the last one wins,
// so what the first left is dropped.
func (f *flattener) intern(parent, prev int32, k string, inSegment bool) int32 {
	id := *f.hint(parent, prev)
	if id < 0 || f.out.keys[id].parent != parent || f.out.keys[id].seg != k {
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
func (f *flattener) lookup(parent int32, k string, inSegment bool) int32 {
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

// addField adds the value at r as the field of path id.
func (f *flattener) addField(id int32, r *reader, jd int) {
	if !f.out.keys[id].hasField {
		f.out.keys[id].hasField = true
		f.flagged = append(f.flagged, id)
	}
	// Written in place: copying each field in from a returned value took
	// a sixth of the projection's time.
	f.out.fields = append(f.out.fields, field{key: id})
	f.value(r, jd, &f.out.fields[len(f.out.fields)-1].v)
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

// value flattens the JSON value at r, nested jd deep. Objects here are at
// the depth limit and become their JSON text. A value that is not JSON
// marks the row bad.
func (f *flattener) value(r *reader, jd int, v *value) {
	switch c := r.peek(); {
	case c == '"':
		raw, esc, ok := r.str()
		switch {
		case !ok:
		case esc:
			f.unescaped = unescape(f.unescaped[:0], raw)
			*v = value{kind: vString, infer: batch.String, text: f.addBytes(f.unescaped)}
			return
		default:
			*v = value{kind: vString, infer: batch.String, text: f.rowSpan(r, r.i-1-len(raw), r.i-1)}
			return
		}
	case c == '{':
		if t, ok := f.addJSON(r, jd); ok {
			*v = value{kind: vJSON, infer: batch.String, text: t}
			return
		}
	case c == '[':
		if a, ok := f.array(r, jd); ok {
			*v = a
			return
		}
	case c == 't':
		if r.literal("true") {
			*v = value{kind: vBool, infer: batch.Bool, bits: 1}
			return
		}
	case c == 'f':
		if r.literal("false") {
			*v = value{kind: vBool, infer: batch.Bool}
			return
		}
	case c == 'n':
		if r.literal("null") {
			*v = value{}
			return
		}
	default:
		start := r.i
		if integer, ok := r.number(); ok {
			*v = classifyNumber(r.s[start:r.i], integer, f.rowSpan(r, start, r.i))
			return
		}
	}
	f.bad = true
	*v = value{}
}

// array flattens the elements of the array at r: scalars as themselves,
// objects and arrays as their JSON text. The array's own JSON text is
// kept too: arrays of objects or mixed kinds go to string columns whole.
func (f *flattener) array(r *reader, jd int) (value, bool) {
	start, at := r.i, len(f.out.elems)
	r.i++ // [
	r.ws()
	if !r.consume(']') {
		for {
			if jd+1 > maxJSONDepth {
				return value{}, false
			}
			var e value
			if r.peek() == '[' {
				t, ok := f.addJSON(r, jd+1)
				if !ok {
					return value{}, false
				}
				e = value{kind: vJSON, infer: batch.String, text: t}
			} else if f.value(r, jd+1, &e); f.bad {
				return value{}, false
			}
			f.out.elems = append(f.out.elems, e)
			r.ws()
			if r.consume(',') {
				r.ws()
				continue
			}
			if r.consume(']') {
				break
			}
			return value{}, false
		}
	}
	n := len(f.out.elems) - at
	return value{
		kind:  vArray,
		infer: arrayKind(f.out.elems[at:]),
		text:  f.addCompact(r, start),
		bits:  elemBits(at, n),
	}, true
}

func (f *flattener) addText(s string) span {
	at := span{at: uint32(f.text.Len()), n: uint32(len(s))}
	f.text.WriteString(s)
	return at
}

func (f *flattener) addBytes(b []byte) span {
	at := span{at: uint32(f.text.Len()), n: uint32(len(b))}
	f.text.Write(b)
	return at
}

// addJSON reads past the object or array at r and adds its compact JSON.
func (f *flattener) addJSON(r *reader, jd int) (span, bool) {
	start := r.i
	if !r.skip(jd) {
		return span{}, false
	}
	return f.addCompact(r, start), true
}

// addCompact adds the JSON value of the row read from start up to r as
// compact JSON: the row's own text when nothing in it would be written
// otherwise (what ingest passes on, compacted, mostly is), else written
// anew.
func (f *flattener) addCompact(r *reader, start int) span {
	raw := r.s[start:r.i]
	if strings.IndexByte(raw, '\\') < 0 && strings.IndexAny(raw, " \t\n\r") < 0 && utf8.ValidString(raw) {
		return f.rowSpan(r, start, r.i)
	}
	f.scratch = f.appendJSON(f.scratch[:0], &reader{s: raw})
	return f.addBytes(f.scratch)
}

// rowSpan is the span of the row's text from start to end, as it was
// sent: no copy is made. A row past inRow bytes (which no event is) is
// copied into Parsed's text instead.
func (f *flattener) rowSpan(r *reader, start, end int) span {
	if end >= inRow {
		return f.addText(r.s[start:end])
	}
	return span{at: inRow | uint32(start), n: uint32(end - start)}
}

// appendJSON appends the JSON value at r, read already, as compact JSON:
// strings unescaped and escaped anew as AppendJSONString writes them.
// Duplicate keys are kept, as sent.
func (f *flattener) appendJSON(dst []byte, r *reader) []byte {
	r.ws()
	switch c := r.peek(); {
	case c == '{' || c == '[':
		end := closing(c)
		r.i++
		dst = append(dst, c)
		r.ws()
		for i := 0; !r.consume(end) && r.i < len(r.s); i++ {
			if i > 0 {
				r.consume(',')
				r.ws()
				dst = append(dst, ',')
			}
			if c == '{' {
				dst = f.appendString(dst, r)
				r.ws()
				r.consume(':')
				dst = append(dst, ':')
			}
			dst = f.appendJSON(dst, r)
			r.ws()
		}
		return append(dst, end)
	case c == '"':
		return f.appendString(dst, r)
	}
	start := r.i // a number or a literal
	for r.i < len(r.s) && !strings.ContainsRune(",]} \t\n\r", rune(r.s[r.i])) {
		r.i++
	}
	return append(dst, r.s[start:r.i]...)
}

// appendString appends the string at r, unescaped and escaped anew.
func (f *flattener) appendString(dst []byte, r *reader) []byte {
	raw, esc, _ := r.str()
	if !esc {
		return appendJSONString(dst, raw)
	}
	f.unescaped = unescape(f.unescaped[:0], raw)
	return appendJSONString(dst, f.unescaped)
}

// appendValueJSON appends a flattened value of row as compact JSON: the text it
// came in, but for strings, which are escaped anew.
func (ps *Parsed) appendValueJSON(dst []byte, row int, v value) []byte {
	switch v.kind {
	case vBool:
		if v.bits == 1 {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case vInt, vFloat, vNumber, vJSON, vArray:
		return append(dst, ps.textOf(row, v.text)...)
	case vString:
		return AppendJSONString(dst, ps.textOf(row, v.text))
	}
	return append(dst, "null"...)
}

const hexDigits = "0123456789abcdef"

// AppendJSONString appends s as a JSON string, as encoding/json writes it
// without HTML escaping: invalid UTF-8 becomes U+FFFD.
func AppendJSONString(dst []byte, s string) []byte { return appendJSONString(dst, s) }

func appendJSONString[S string | []byte](dst []byte, s S) []byte {
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
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}
