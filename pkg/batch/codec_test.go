package batch_test

import (
	"bytes"
	"errors"
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

func FuzzDecode(f *testing.F) {
	f.Add(batch.Encode(sampleBatch(1, 20, 4)))
	f.Add(batch.Encode(&batch.Batch{}))
	f.Add([]byte("SGB\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := batch.Decode(data)
		if err != nil {
			require.ErrorIs(t, err, batch.ErrCorrupt)
			return
		}
		// Whatever decodes must survive a round trip.
		again, err := batch.Decode(batch.Encode(b))
		require.NoError(t, err)
		require.Equal(t, b.Len(), again.Len())
		require.Equal(t, b.EventID, again.EventID)
		require.Equal(t, b.Seq, again.Seq)
	})
}

func BenchmarkEncode(b *testing.B) {
	bt := sampleBatch(0, 10_000, 100)
	size := 0
	b.SetBytes(int64(eventBytes(bt)))
	b.ReportAllocs()
	for b.Loop() {
		size = len(batch.Encode(bt))
	}
	b.ReportMetric(float64(size), "encoded_B")
	b.ReportMetric(float64(bt.Len()*b.N)/b.Elapsed().Seconds(), "rows/s")
}

func BenchmarkDecode(b *testing.B) {
	bt := sampleBatch(0, 10_000, 100)
	data := batch.Encode(bt)
	b.SetBytes(int64(eventBytes(bt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := batch.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data)), "encoded_B")
	b.ReportMetric(float64(bt.Len()*b.N)/b.Elapsed().Seconds(), "rows/s")
}
