package batch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// The encoded form: magic, version, then a zstd frame holding the header
// (shard, first and last sequence, rows) and each column in turn. String
// columns are all lengths then all bytes, so like values sit together;
// integer columns are zig-zag deltas, small for timestamps and sequences.
// Simpler and faster than Arrow IPC for these nine columns (see README).
var magic = [4]byte{'S', 'G', 'B', 1}

// MaxDecodedBytes bounds the decompressed size of one batch, so a corrupt
// or hostile message cannot exhaust memory.
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

// Encode returns the compressed columnar form of b.
func Encode(b *Batch) []byte {
	raw := make([]byte, 0, 64+b.Len()*64)
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
	out := append(make([]byte, 0, len(raw)/3+16), magic[:]...)
	return zstdEncoder().EncodeAll(raw, out)
}

// Decode parses bytes written by Encode.
func Decode(data []byte) (*Batch, error) {
	if len(data) < len(magic) || [4]byte(data[:4]) != magic {
		return nil, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	raw, err := zstdDecoder().DecodeAll(data[4:], nil)
	if err != nil {
		return nil, fmt.Errorf("%w: decompress: %w", ErrCorrupt, err)
	}
	r := &colReader{b: raw}
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
	b.Seq = make([]uint64, rows)
	prev := b.FirstSeq
	for i := range b.Seq {
		prev += r.uvarint()
		b.Seq[i] = prev
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(r.b))
	}
	return b, nil
}

func appendStrings(dst []byte, col []string) []byte {
	for _, s := range col {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
	}
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

type colReader struct {
	b   []byte
	err error
}

func (r *colReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated %s", ErrCorrupt, what)
	}
	r.b = nil
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

func (r *colReader) strings(rows int) []string {
	lens := make([]uint64, rows)
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
	// One allocation for the column's bytes; the strings share it.
	all := string(r.b[:total])
	r.b = r.b[total:]
	out := make([]string, rows)
	var off uint64
	for i, l := range lens {
		out[i] = all[off : off+l]
		off += l
	}
	return out
}

func (r *colReader) deltas(rows int) []int64 {
	out := make([]int64, rows)
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
