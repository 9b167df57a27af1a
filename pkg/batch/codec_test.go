package batch_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

func TestCodecRoundTrip(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)
	for _, tt := range []struct {
		name string
		b    *batch.Batch
	}{
		{"one row", func() *batch.Batch {
			b := &batch.Batch{Shard: 5}
			b.Append(1, []event.Event{{EventID: "a", Tenant: "t", UserID: "u", Type: "x", TS: at, ReceivedAt: at, Properties: "{}"}})
			return b
		}()},
		{"empty strings and epoch", func() *batch.Batch {
			b := &batch.Batch{Shard: 0}
			b.Append(7, []event.Event{{TS: time.Unix(0, 0), ReceivedAt: time.Unix(0, 0)}, {}})
			return b
		}()},
		{"unicode and times before 1970", func() *batch.Batch {
			b := &batch.Batch{Shard: 65535}
			b.Append(1<<40, []event.Event{
				{EventID: "ид-1", Tenant: "日本", UserID: "😀", Type: "ü", TS: time.Date(1901, 1, 1, 0, 0, 0, 0, time.UTC), ReceivedAt: at, Properties: `{"ключ":"значение","emoji":"🎉"}`},
				{EventID: "x\x00y", Tenant: "\xff\xfe", UserID: "", Type: "t", TS: at.Add(-time.Hour), ReceivedAt: at.Add(-2 * time.Hour), Properties: "{}"},
			})
			b.Append(1<<40+5, []event.Event{{EventID: "z", TS: at, ReceivedAt: at}})
			return b
		}()},
		{"large properties", func() *batch.Batch {
			b := &batch.Batch{Shard: 1}
			b.Append(3, []event.Event{{EventID: "big", Properties: `{"blob":"` + strings.Repeat("0123456789abcdef", 1<<16) + `"}`, TS: at, ReceivedAt: at}})
			return b
		}()},
		{"10k rows", sampleBatch(4, 10_000, 100)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := batch.Encode(tt.b)
			got, err := batch.Decode(data)
			require.NoError(t, err)
			require.Equal(t, tt.b, got)
			require.Equal(t, tt.b.ID(), got.ID())
		})
	}
}

func TestCodecCompresses(t *testing.T) {
	b := sampleBatch(0, 10_000, 100)
	data := batch.Encode(b)
	require.Less(t, len(data)*3, eventBytes(b), "encoded %d bytes for %d event bytes", len(data), eventBytes(b))
}

func TestDecodeRejectsCorruptInput(t *testing.T) {
	good := batch.Encode(sampleBatch(2, 200, 10))
	reencode := func(raw []byte) []byte {
		// A well-compressed frame around broken columns.
		var buf bytes.Buffer
		buf.Write([]byte{'S', 'G', 'B', 1})
		return append(buf.Bytes(), zstdFrame(t, raw)...)
	}
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"short magic", []byte("SG")},
		{"bad magic", append([]byte("XXXX"), good[4:]...)},
		{"bad version", append([]byte{'S', 'G', 'B', 9}, good[4:]...)},
		{"not zstd", append([]byte{'S', 'G', 'B', 1}, "hello"...)},
		{"truncated frame", good[:len(good)/2]},
		{"trailing bytes inside", reencode(append(rawOf(t, good), 0))},
		{"truncated columns", reencode(rawOf(t, good)[:100])},
		{"rows beyond data", reencode([]byte{1, 1, 1, 200, 1})},
		// Two string lengths whose sum wraps around to 1.
		{"wrapping string lengths", reencode([]byte{
			0, 1, 1, 2,
			0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02,
			'a', 'b', 'c',
		})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := batch.Decode(tt.data)
			require.Nil(t, got)
			require.True(t, errors.Is(err, batch.ErrCorrupt), "got %v", err)
		})
	}
}

func TestCodecRoundTripProjected(t *testing.T) {
	oneRow := func() *batch.Batch {
		b := &batch.Batch{Shard: 1}
		b.Append(9, []event.Event{{EventID: "a"}})
		return b
	}
	for _, tt := range []struct {
		name string
		b    *batch.Batch
	}{
		{"every kind", goldenV2()},
		{"no typed columns", func() *batch.Batch {
			b := oneRow()
			b.Conflicts, b.Unpromoted = []string{""}, [][]string{nil}
			return b
		}()},
		{"only NULL elements", func() *batch.Batch {
			b := oneRow()
			b.Conflicts, b.Unpromoted = []string{`{"/x":1}`}, [][]string{{"/y", ""}}
			b.Typed = []batch.Column{
				arrayCol("b", batch.Bool, []any{nil, nil}),
				arrayCol("f", batch.Float64, []any{nil}),
				arrayCol("i", batch.Int64, []any{nil, nil, nil}),
				arrayCol("s", batch.String, []any{nil}),
			}
			return b
		}()},
		{"more than eight rows of bools", func() *batch.Batch {
			b := &batch.Batch{}
			var flags, nulls []any
			var lists [][]any
			for i := range 19 {
				b.Append(uint64(i+1), []event.Event{{EventID: fmt.Sprint(i)}})
				b.Conflicts = append(b.Conflicts, "")
				b.Unpromoted = append(b.Unpromoted, nil)
				flags = append(flags, i%3 == 0)
				if i%4 == 0 {
					nulls = append(nulls, nil)
				} else {
					nulls = append(nulls, i%2 == 0)
				}
				lists = append(lists, []any{i%2 == 0, nil, true})
			}
			b.Typed = []batch.Column{
				scalarCol("all", batch.Bool, flags...),
				arrayCol("lists", batch.Bool, lists...),
				scalarCol("some", batch.Bool, nulls...),
			}
			return b
		}()},
		{"10k rows, 20 typed columns", wideBatch(3, 10_000, 100)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := batch.Encode(tt.b)
			require.Equal(t, byte(2), data[3], "version")
			got, err := batch.Decode(data)
			require.NoError(t, err)
			require.True(t, got.Projected())
			requireSameBatch(t, tt.b, got)
		})
	}
}

func TestCodecVersions(t *testing.T) {
	b := goldenV2()
	require.Equal(t, []byte("SGB\x02"), batch.Encode(b)[:4], "projected")
	require.Equal(t, []byte("SGB\x01"), batch.Encode(unprojected(b))[:4], "unprojected")

	// A projected batch of no rows stays projected.
	empty := b.After(b.LastSeq)
	require.True(t, empty.Projected())
	got, err := batch.Decode(batch.Encode(empty))
	require.NoError(t, err)
	require.Equal(t, 0, got.Len())
	require.True(t, got.Projected())
	require.Nil(t, got.Typed)

	// And an unprojected one decodes unprojected.
	got, err = batch.Decode(batch.Encode(unprojected(b)))
	require.NoError(t, err)
	require.False(t, got.Projected())
	require.Nil(t, got.Unpromoted)
	require.Nil(t, got.Typed)
}

func TestDecodeRejectsCorruptProjection(t *testing.T) {
	// The version 1 columns of one row, then the projection: no conflict,
	// no unpromoted path, then the typed columns.
	one := &batch.Batch{Shard: 1}
	one.Append(9, []event.Event{{EventID: "a"}})
	base := rawOf(t, batch.Encode(one))
	v2 := func(parts ...[]byte) []byte {
		raw := append(slices.Clone(base), 0, 0)
		for _, p := range parts {
			raw = append(raw, p...)
		}
		return append([]byte("SGB\x02"), zstdFrame(t, raw)...)
	}
	// col is a typed column: name, kind byte, then the rest.
	col := func(name string, kind byte, rest ...byte) []byte {
		out := binary.AppendUvarint(nil, uint64(len(name)))
		out = append(out, name...)
		return append(append(out, kind), rest...)
	}
	int64Col := col("n", byte(batch.Int64), 0, 2) // not NULL, 1
	for _, tt := range []struct {
		name string
		data []byte
		want string
	}{
		{"no projection", append([]byte("SGB\x02"), zstdFrame(t, base)...), "truncated"},
		{"valid", v2([]byte{1}, int64Col), ""},
		{"conflicts but no more", append([]byte("SGB\x02"), zstdFrame(t, append(slices.Clone(base), 0))...), "truncated"},
		{"unpromoted count beyond the data", append([]byte("SGB\x02"), zstdFrame(t, append(slices.Clone(base), 0, 100, 1))...), "truncated list column"},
		{"typed count beyond the data", v2([]byte{100}, int64Col), "truncated typed columns"},
		{"one typed column missing", v2([]byte{2}, int64Col), "truncated"},
		{"empty name", v2([]byte{1}, col("", byte(batch.Int64), 0, 2)), "without a name"},
		{"name beyond the data", v2([]byte{1, 50, 'n'}), "truncated column name"},
		{"no kind", v2([]byte{1, 1, 'n'}), "truncated column kind"},
		{"duplicate names", v2([]byte{2}, int64Col, int64Col), `"n" twice`},
		{"kind zero", v2([]byte{1}, col("n", 0, 0, 2)), "invalid kind 0"},
		{"unknown kind", v2([]byte{1}, col("n", 6, 0, 2)), "invalid kind 6"},
		{"array of datetime", v2([]byte{1}, col("n", byte(batch.ArrayOf(batch.DateTime)), 0, 0)), "invalid kind 133"},
		{"array of nothing", v2([]byte{1}, col("n", 0x80, 0, 0)), "invalid kind 128"},
		{"null bitmap past the rows", v2([]byte{1}, col("n", byte(batch.Int64), 0b10, 2)), "null bitmap: bits set past the end"},
		{"bool bitmap past the values", v2([]byte{1}, col("b", byte(batch.Bool), 0, 0b11)), "bool values: bits set past the end"},
		{"value missing", v2([]byte{1}, col("n", byte(batch.Int64), 0)), "truncated integer column"},
		{"float cut short", v2([]byte{1}, col("f", byte(batch.Float64), 0, 1, 2, 3)), "truncated float column"},
		{"string beyond the data", v2([]byte{1}, col("s", byte(batch.String), 0, 9, 'x')), "truncated string column"},
		{"array length beyond 32 bits", v2([]byte{1}, col("a", byte(batch.ArrayOf(batch.Int64)), 0x80, 0x80, 0x80, 0x80, 0x10, 0)), "truncated array lengths"},
		{"array length beyond the data", v2([]byte{1}, col("a", byte(batch.ArrayOf(batch.Int64)), 0xff, 0x7f, 0)), "truncated array lengths"},
		{"element missing", v2([]byte{1}, col("a", byte(batch.ArrayOf(batch.Int64)), 2, 0b01)), "truncated integer column"},
		{"trailing bytes", v2([]byte{1}, int64Col, []byte{0}), "1 trailing bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := batch.Decode(tt.data)
			if tt.want == "" {
				require.NoError(t, err)
				require.Equal(t, []int64{1}, got.Typed[0].Ints)
				return
			}
			require.Nil(t, got)
			require.ErrorIs(t, err, batch.ErrCorrupt)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

// A message of a few megabytes whose array column claims more elements
// than the decoded size bound lets through is refused before the decoder
// allocates them.
func TestDecodeBoundsMemory(t *testing.T) {
	one := &batch.Batch{Shard: 1}
	one.Append(9, []event.Event{{EventID: "a"}})
	raw := append(rawOf(t, batch.Encode(one)), 0, 0, 1, 1, 'a', byte(batch.ArrayOf(batch.Int64)))
	// One row of 64 Mi elements, all NULL: 8 MiB of bitmap, no values,
	// and 64 MiB of flags plus 512 MiB of zero values once decoded.
	const elems = 64 << 20
	raw = binary.AppendUvarint(raw, elems)
	raw = append(raw, bytes.Repeat([]byte{0xff}, elems/8)...)
	data := append([]byte("SGB\x02"), zstdFrame(t, raw)...)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, err := batch.Decode(data)
	runtime.ReadMemStats(&after)
	require.Nil(t, got)
	require.ErrorIs(t, err, batch.ErrCorrupt)
	require.ErrorContains(t, err, "decoded size bound")
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(256<<20), "allocated while decoding")
}

func FuzzDecode(f *testing.F) {
	f.Add(batch.Encode(sampleBatch(1, 20, 4)))
	f.Add(batch.Encode(&batch.Batch{}))
	f.Add(batch.Encode(goldenV1()))
	f.Add(batch.Encode(goldenV2()))
	f.Add(batch.Encode(wideBatch(2, 30, 7)))
	f.Add([]byte("SGB\x01"))
	f.Add([]byte("SGB\x02"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeStable(t, data)
	})
}

// FuzzDecodeColumns fuzzes the uncompressed columns, which FuzzDecode
// rarely reaches through a mutated zstd frame.
func FuzzDecodeColumns(f *testing.F) {
	for _, b := range []*batch.Batch{sampleBatch(1, 20, 4), goldenV1(), goldenV2(), wideBatch(2, 30, 7)} {
		data := batch.Encode(b)
		f.Add(data[3], rawOf(f, data))
	}
	f.Fuzz(func(t *testing.T, version byte, raw []byte) {
		decodeStable(t, append([]byte{'S', 'G', 'B', version}, fuzzFrame(raw)...))
	})
}

// decodeStable checks that data decodes or is refused as corrupt, and
// that whatever decodes encodes to a batch that decodes the same.
func decodeStable(t *testing.T, data []byte) {
	t.Helper()
	b, err := batch.Decode(data)
	if err != nil {
		require.ErrorIs(t, err, batch.ErrCorrupt)
		return
	}
	again, err := batch.Decode(batch.Encode(b))
	require.NoError(t, err)
	requireSameBatch(t, b, again)
}

func BenchmarkEncode(b *testing.B) {
	for _, tt := range benchBatches() {
		b.Run(tt.name, func(b *testing.B) {
			size := 0
			b.SetBytes(int64(eventBytes(tt.b)))
			b.ReportAllocs()
			for b.Loop() {
				size = len(batch.Encode(tt.b))
			}
			reportSize(b, tt.b, size)
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, tt := range benchBatches() {
		b.Run(tt.name, func(b *testing.B) {
			data := batch.Encode(tt.b)
			b.SetBytes(int64(eventBytes(tt.b)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := batch.Decode(data); err != nil {
					b.Fatal(err)
				}
			}
			reportSize(b, tt.b, len(data))
		})
	}
}

// benchBatches are the batches the codec benchmarks, 10k rows each: the
// sample batch (version 1), and rows with 20 properties each (wide),
// unprojected (version 1) and projected into 20 typed columns (version
// 2), so the cost of the typed columns shows.
func benchBatches() []struct {
	name string
	b    *batch.Batch
} {
	wide := wideBatch(0, 10_000, 100)
	return []struct {
		name string
		b    *batch.Batch
	}{
		{"sample_v1", sampleBatch(0, 10_000, 100)},
		{"wide_v1", unprojected(wide)},
		{"wide_v2", wide},
	}
}

func reportSize(b *testing.B, bt *batch.Batch, encoded int) {
	b.ReportMetric(float64(encoded), "encoded_B")
	b.ReportMetric(float64(encoded)/float64(bt.Len()), "B/event")
	b.ReportMetric(float64(bt.Len()*b.N)/b.Elapsed().Seconds(), "rows/s")
}
