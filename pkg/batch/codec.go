package batch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"unsafe"

	"github.com/klauspost/compress/zstd"
)

// The encoded form: "SGB", a version byte, then one zstd frame of columns.
// Simpler and faster than Arrow IPC for these columns (docs/architecture.md).
//
// Version 1, an unprojected batch: the header (shard, first and last
// sequence, rows, as uvarints), then event_id, tenant, user_id, type and
// properties as string columns, ts and received_at as zig-zag deltas, and
// seq as uvarint deltas from the first sequence.
//
// Version 2, a projected batch: the version 1 content, then
//
//	_conflicts    a string column
//	_unpromoted   a list column: per row the count of paths, then every
//	              path as one string column
//	typed         the count of columns, then per column its name (uvarint
//	              length, bytes), its kind byte and its values
//
// A typed column's values: an array column first holds its rows' element
// counts (uvarints); then, over its rows (scalar) or elements (array), a
// null bitmap, then the values of the non-NULL slots only: bools as a
// bitmap, int64 and datetime as zig-zag deltas (for datetimes and rising
// ids they are much smaller than plain zig-zag varints, for other ints
// about the same), float64 as 8-byte little endian bits, strings as a
// string column.
//
// Layouts: a string column is all lengths (uvarints) then all bytes, so
// like values sit together for zstd; a bitmap is one bit per slot, least
// significant bit first, unused bits of the last byte zero.
//
// An unprojected batch is written as version 1, so a batcher of this
// version and a sink of the last one interoperate until typed columns are
// in use.
var magic = [3]byte{'S', 'G', 'B'}

// The versions of the encoded form.
const (
	version1 = 1
	version2 = 2
)

// MaxDecodedBytes bounds the decompressed size of one batch, and the memory
// the decoded batch may take, so a corrupt or hostile message cannot
// exhaust memory.
const MaxDecodedBytes = 512 << 20

// ErrCorrupt reports bytes that are not a valid encoded batch.
var ErrCorrupt = errors.New("corrupt batch encoding")

var (
	encoderOnce sync.Once
	encoder     *zstd.Encoder
	decoderOnce sync.Once
	decoder     *zstd.Decoder
)

func zstdEncoder() *zstd.Encoder {
	encoderOnce.Do(func() {
		encoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	})
	return encoder
}

func zstdDecoder() *zstd.Decoder {
	decoderOnce.Do(func() {
		decoder, _ = zstd.NewReader(nil, zstd.WithDecoderMaxMemory(MaxDecodedBytes), zstd.WithDecoderConcurrency(0))
	})
	return decoder
}

// Encode returns the compressed columnar form of b: version 2 when b is
// projected, version 1 otherwise. Its columns must agree with its rows
// (Column.check).
func Encode(b *Batch) []byte {
	raw := make([]byte, 0, encodedSizeHint(b))
	raw = binary.AppendUvarint(raw, uint64(b.Shard))
	raw = binary.AppendUvarint(raw, b.FirstSeq)
	raw = binary.AppendUvarint(raw, b.LastSeq)
	raw = binary.AppendUvarint(raw, uint64(b.Len()))
	for _, col := range [][]string{b.EventID, b.Tenant, b.UserID, b.Type, b.Properties} {
		raw = appendStrings(raw, col)
	}
	raw = appendDeltas(raw, b.TS)
	raw = appendDeltas(raw, b.ReceivedAt)
	prev := b.FirstSeq
	for _, s := range b.Seq {
		raw = binary.AppendUvarint(raw, s-prev)
		prev = s
	}
	version := byte(version1)
	if b.Projected() {
		version = version2
		raw = appendStrings(raw, b.Conflicts)
		raw = appendLists(raw, b.Unpromoted)
		raw = binary.AppendUvarint(raw, uint64(len(b.Typed)))
		for i := range b.Typed {
			raw = appendColumn(raw, &b.Typed[i])
		}
	}
	out := append(make([]byte, 0, len(raw)/3+16), magic[0], magic[1], magic[2], version)
	return zstdEncoder().EncodeAll(raw, out)
}

// encodedSizeHint is about the uncompressed size of b's columns, so that
// the buffer is not copied as it grows: the strings dominate, then about
// 8 bytes per typed value.
func encodedSizeHint(b *Batch) int {
	n := 64 + b.Len()*(64+8*len(b.Typed))
	for _, p := range b.Properties {
		n += len(p)
	}
	for i := range b.Typed {
		for _, s := range b.Typed[i].Strs {
			n += len(s)
		}
	}
	return n
}

// Decode parses bytes written by Encode, of either version.
func Decode(data []byte) (*Batch, error) {
	if len(data) < 4 || [3]byte(data[:3]) != magic {
		return nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	version := data[3]
	if version != version1 && version != version2 {
		return nil, fmt.Errorf("%w: unknown version %d", ErrCorrupt, version)
	}
	raw, err := zstdDecoder().DecodeAll(data[4:], nil)
	if err != nil {
		return nil, fmt.Errorf("%w: decompress: %w", ErrCorrupt, err)
	}
	r := &colReader{b: raw, budget: MaxDecodedBytes}
	b := &Batch{Shard: int(r.uvarint()), FirstSeq: r.uvarint(), LastSeq: r.uvarint()}
	n := r.uvarint()
	if r.err != nil || n > uint64(len(raw)) {
		return nil, fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	rows := int(n)
	b.EventID = r.strings(rows)
	b.Tenant = r.strings(rows)
	b.UserID = r.strings(rows)
	b.Type = r.strings(rows)
	b.Properties = r.strings(rows)
	b.TS = r.deltas(rows)
	b.ReceivedAt = r.deltas(rows)
	b.Seq = alloc[uint64](r, rows)
	prev := b.FirstSeq
	for i := range b.Seq {
		prev += r.uvarint()
		b.Seq[i] = prev
	}
	if version == version2 {
		b.Conflicts = r.strings(rows)
		b.Unpromoted = r.lists(rows)
		b.Typed = r.columns(rows)
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(r.b))
	}
	return b, nil
}

// appendStrings writes a string column: every length, then every string.
func appendStrings(dst []byte, col []string) []byte {
	return appendBytes(appendLens(dst, col), col)
}

func appendLens(dst []byte, col []string) []byte {
	for _, s := range col {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
	}
	return dst
}

func appendBytes(dst []byte, col []string) []byte {
	for _, s := range col {
		dst = append(dst, s...)
	}
	return dst
}

func appendDeltas(dst []byte, col []int64) []byte {
	var prev int64
	for _, v := range col {
		dst = binary.AppendVarint(dst, v-prev)
		prev = v
	}
	return dst
}

// appendLists writes per row the count of strings, then every string as
// one string column (appendStrings' layout), without gathering them first.
func appendLists(dst []byte, rows [][]string) []byte {
	for _, l := range rows {
		dst = binary.AppendUvarint(dst, uint64(len(l)))
	}
	for _, l := range rows {
		dst = appendLens(dst, l)
	}
	for _, l := range rows {
		dst = appendBytes(dst, l)
	}
	return dst
}

// appendColumn writes a typed column: name, kind, array lengths, null
// bitmap and the non-NULL values.
func appendColumn(dst []byte, c *Column) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(c.Name)))
	dst = append(dst, c.Name...)
	dst = append(dst, byte(c.Kind))
	null := c.Null
	if c.Kind.IsArray() {
		for _, n := range c.Lens {
			dst = binary.AppendUvarint(dst, uint64(n))
		}
		null = c.ElemNull
	}
	dst = appendBits(dst, null)
	switch c.Kind.Elem() {
	case Bool:
		dst = appendBools(dst, nonNull(c.Ints, null))
	case Float64:
		dst = appendFloats(dst, nonNull(c.Floats, null))
	case String:
		dst = appendStrings(dst, nonNull(c.Strs, null))
	default: // Int64, DateTime
		dst = appendDeltas(dst, nonNull(c.Ints, null))
	}
	return dst
}

// nonNull returns the values whose slot is not NULL.
func nonNull[T any](vals []T, null []bool) []T {
	kept := 0
	for _, n := range null {
		if !n {
			kept++
		}
	}
	if kept == len(vals) {
		return vals
	}
	out := make([]T, 0, kept)
	for i, n := range null {
		if !n {
			out = append(out, vals[i])
		}
	}
	return out
}

// appendBits writes one bit per flag, least significant first.
func appendBits(dst []byte, flags []bool) []byte {
	for i := 0; i < len(flags); i += 8 {
		var by byte
		for j, f := range flags[i:min(i+8, len(flags))] {
			if f {
				by |= 1 << j
			}
		}
		dst = append(dst, by)
	}
	return dst
}

// appendBools writes bool values (0 or 1) as a bitmap.
func appendBools(dst []byte, vals []int64) []byte {
	for i := 0; i < len(vals); i += 8 {
		var by byte
		for j, v := range vals[i:min(i+8, len(vals))] {
			if v != 0 {
				by |= 1 << j
			}
		}
		dst = append(dst, by)
	}
	return dst
}

// appendFloats writes the bits of each value, so every value, NaN
// payloads and negative zero included, comes back as it was.
func appendFloats(dst []byte, vals []float64) []byte {
	for _, v := range vals {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(v))
	}
	return dst
}

// colReader reads columns off the uncompressed form. The first error
// sticks and empties it, so a decoder checks once at the end. budget is
// the memory the decoded batch may still take: every slice is charged
// before it is made, so no input makes the decoder allocate beyond
// MaxDecodedBytes, however small its compressed form.
type colReader struct {
	b      []byte
	err    error
	budget int
}

func (r *colReader) fail(what string) {
	r.failf("truncated %s", what)
}

func (r *colReader) failf(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	r.b = nil
}

// charge takes n values of size bytes off r's budget, or fails.
func (r *colReader) charge(n, size int) bool {
	if r.err != nil || n > r.budget/size {
		r.failf("%d values would pass the decoded size bound", n)
		return false
	}
	r.budget -= n * size
	return true
}

// alloc makes a slice of n values charged to r's budget, or fails.
func alloc[T any](r *colReader, n int) []T {
	if !r.charge(n, int(unsafe.Sizeof(*new(T)))) {
		return nil
	}
	return make([]T, n)
}

func (r *colReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("integer")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a number of things that each take at least one more byte,
// so one beyond the bytes left is corrupt.
func (r *colReader) count(what string) int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail(what)
		return 0
	}
	return int(n)
}

func (r *colReader) strings(rows int) []string {
	lens := alloc[uint64](r, rows)
	var total uint64
	for i := range lens {
		lens[i] = r.uvarint()
		// Checked per string, so a hostile length cannot wrap the total.
		if lens[i] > uint64(len(r.b)) {
			r.fail("string column")
			return nil
		}
		total += lens[i]
	}
	if r.err != nil || total > uint64(len(r.b)) {
		r.fail("string column")
		return nil
	}
	// The strings share the decompressed block's bytes, which are Decode's
	// own and never written again: a copy of them was a fifth of the
	// sink's live heap.
	var all string
	if total > 0 {
		all = unsafe.String(&r.b[0], total)
	}
	r.b = r.b[total:]
	out := alloc[string](r, rows)
	var off uint64
	for i, l := range lens {
		out[i] = all[off : off+l]
		off += l
	}
	return out
}

func (r *colReader) deltas(rows int) []int64 {
	out := alloc[int64](r, rows)
	var prev int64
	for i := range out {
		d, n := binary.Varint(r.b)
		if n <= 0 {
			r.fail("integer column")
			return nil
		}
		r.b = r.b[n:]
		prev += d
		out[i] = prev
	}
	return out
}

// lists reads what appendLists wrote: per row nil or its strings, which
// share one backing array.
func (r *colReader) lists(rows int) [][]string {
	counts := alloc[int](r, rows)
	total := 0
	for i := range counts {
		// Every string takes a byte for its length, so the total is
		// bounded by the bytes left and cannot wrap.
		counts[i] = r.count("list column")
		total += counts[i]
		if total > len(r.b) {
			r.fail("list column")
		}
	}
	flat := r.strings(total)
	out := alloc[[]string](r, rows)
	if r.err != nil {
		return nil
	}
	off := 0
	for i, n := range counts {
		if n > 0 {
			out[i] = flat[off : off+n : off+n]
			off += n
		}
	}
	return out
}

// columns reads the typed columns of a batch of rows, and checks each.
func (r *colReader) columns(rows int) []Column {
	n := r.count("typed columns")
	if n == 0 || r.err != nil {
		return nil
	}
	out := alloc[Column](r, n)
	seen := make(map[string]struct{})
	for i := range out {
		out[i] = r.column(rows)
		if r.err != nil {
			return nil
		}
		if _, dup := seen[out[i].Name]; dup {
			r.failf("typed column %q twice", out[i].Name)
			return nil
		}
		seen[out[i].Name] = struct{}{}
		if err := out[i].check(rows); err != nil {
			r.failf("%v", err)
			return nil
		}
	}
	return out
}

// column reads what appendColumn wrote.
func (r *colReader) column(rows int) Column {
	name := r.count("column name")
	if !r.charge(name, 1) {
		return Column{}
	}
	c := Column{Name: string(r.b[:name])}
	r.b = r.b[name:]
	if c.Name == "" {
		r.failf("typed column without a name")
		return c
	}
	if len(r.b) == 0 {
		r.fail("column kind")
		return c
	}
	c.Kind = Kind(r.b[0])
	r.b = r.b[1:]
	if !c.Kind.Valid() {
		r.failf("column %q: invalid kind %d", c.Name, c.Kind)
		return c
	}
	var null []bool
	if c.Kind.IsArray() {
		var elems int
		c.Lens, elems = r.lens(rows)
		c.ElemNull = r.bits(elems)
		null = c.ElemNull
	} else {
		c.Null = r.bits(rows)
		null = c.Null
	}
	values := len(null)
	for _, n := range null {
		if n {
			values--
		}
	}
	switch c.Kind.Elem() {
	case Bool:
		c.Ints = spread(r, r.bools(values), null)
	case Float64:
		c.Floats = spread(r, r.floats(values), null)
	case String:
		c.Strs = spread(r, r.strings(values), null)
	default: // Int64, DateTime
		c.Ints = spread(r, r.deltas(values), null)
	}
	return c
}

// lens reads the element counts of an array column's rows and returns
// them with their sum. Each element takes at least a bit of the null
// bitmap, which bounds the sum by the bytes left.
func (r *colReader) lens(rows int) ([]uint32, int) {
	out := alloc[uint32](r, rows)
	total := 0
	for i := range out {
		n := r.uvarint()
		if n > math.MaxUint32 || n > 8*uint64(len(r.b)) {
			r.fail("array lengths")
			return nil, 0
		}
		out[i] = uint32(n)
		total += int(n)
		if total > 8*len(r.b) {
			r.fail("array lengths")
			return nil, 0
		}
	}
	if rows == 0 {
		out = nil
	}
	return out, total
}

// bits reads a bitmap of n flags.
func (r *colReader) bits(n int) []bool {
	raw := r.bitmap(n, "null bitmap")
	out := alloc[bool](r, n)
	if r.err != nil || n == 0 {
		return nil
	}
	for i := range out {
		out[i] = raw[i/8]&(1<<(i%8)) != 0
	}
	return out
}

// bools reads n bool values, as 0 or 1.
func (r *colReader) bools(n int) []int64 {
	raw := r.bitmap(n, "bool values")
	out := alloc[int64](r, n)
	if r.err != nil {
		return nil
	}
	for i := range out {
		out[i] = int64(raw[i/8]>>(i%8)) & 1
	}
	return out
}

// bitmap takes the bytes of n bits, whose unused last bits must be zero
// so that a batch has one encoding.
func (r *colReader) bitmap(n int, what string) []byte {
	size := (n + 7) / 8
	if r.err != nil || size > len(r.b) {
		r.fail(what)
		return nil
	}
	raw := r.b[:size]
	r.b = r.b[size:]
	if n%8 != 0 && bits.LeadingZeros8(raw[size-1]) < 8-n%8 {
		r.failf("%s: bits set past the end", what)
		return nil
	}
	return raw
}

func (r *colReader) floats(n int) []float64 {
	if n > len(r.b)/8 {
		r.fail("float column")
		return nil
	}
	out := alloc[float64](r, n)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(r.b[8*i:]))
	}
	r.b = r.b[8*len(out):]
	return out
}

// spread places the non-NULL values in their slots of a column, which
// hold the zero value when NULL. A column of no slots is nil.
func spread[T any](r *colReader, vals []T, null []bool) []T {
	if r.err != nil || len(null) == 0 {
		return nil
	}
	if len(vals) == len(null) {
		return vals
	}
	out := alloc[T](r, len(null))
	j := 0
	for i, n := range null {
		if !n {
			out[i] = vals[j]
			j++
		}
	}
	return out
}
