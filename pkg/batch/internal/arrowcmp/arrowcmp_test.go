package arrowcmp

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

// sampleBatch is the batch pkg/batch benchmarks: 10k rows shaped like
// real traffic in messages of 100 events (same generator, same seed).
func sampleBatch(rows, perMsg int) *batch.Batch {
	r := rand.New(rand.NewPCG(uint64(rows), 1))
	types := []string{"page_view", "click", "add_to_cart", "purchase", "signup", "login", "search", "scroll"}
	const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	events := make([]event.Event, rows)
	for i := range events {
		var id [26]byte
		for j := range id {
			id[j] = alphabet[r.IntN(len(alphabet))]
		}
		ts := at.Add(time.Duration(i)*time.Millisecond + time.Duration(r.IntN(5000))*time.Microsecond)
		props := fmt.Sprintf(`{"page":"/products/%d","ref":"%s","price":%d.%02d,"session":"s-%d"}`,
			r.IntN(5000), types[r.IntN(len(types))], r.IntN(500), r.IntN(100), r.IntN(1_000_000))
		if r.IntN(10) == 0 {
			props = `{"note":"` + strings.Repeat("x", r.IntN(400)) + `"}`
		}
		events[i] = event.Event{
			EventID:    string(id[:]),
			Tenant:     fmt.Sprintf("tenant-%d", r.IntN(5)),
			UserID:     fmt.Sprintf("user-%d", r.IntN(100_000)),
			Type:       types[r.IntN(len(types))],
			TS:         ts.Truncate(time.Microsecond),
			ReceivedAt: ts.Add(time.Duration(r.IntN(2000)) * time.Millisecond).Truncate(time.Microsecond),
			Properties: props,
		}
	}
	b := &batch.Batch{}
	seq := uint64(1000)
	for i := 0; i < rows; i += perMsg {
		b.Append(seq, events[i:min(i+perMsg, rows)])
		seq++
	}
	return b
}

func eventBytes(b *batch.Batch) int {
	n := 0
	for i := range b.Len() {
		n += len(b.EventID[i]) + len(b.Tenant[i]) + len(b.UserID[i]) + len(b.Type[i]) + len(b.Properties[i]) + 16
	}
	return n
}

var schema = arrow.NewSchema([]arrow.Field{
	{Name: "event_id", Type: arrow.BinaryTypes.String},
	{Name: "tenant", Type: arrow.BinaryTypes.String},
	{Name: "user_id", Type: arrow.BinaryTypes.String},
	{Name: "type", Type: arrow.BinaryTypes.String},
	{Name: "ts", Type: arrow.FixedWidthTypes.Timestamp_us},
	{Name: "received_at", Type: arrow.FixedWidthTypes.Timestamp_us},
	{Name: "properties", Type: arrow.BinaryTypes.String},
	{Name: "seq", Type: arrow.PrimitiveTypes.Uint64},
}, nil)

// arrowEncode builds a record of the batch's columns and writes it as an
// Arrow IPC stream with zstd-compressed buffers.
func arrowEncode(b *batch.Batch) []byte {
	mem := memory.DefaultAllocator
	rb := array.NewRecordBuilder(mem, schema)
	defer rb.Release()
	for i, col := range [][]string{b.EventID, b.Tenant, b.UserID, b.Type} {
		rb.Field(i).(*array.StringBuilder).AppendValues(col, nil)
	}
	for i, col := range [][]int64{b.TS, b.ReceivedAt} {
		tb := rb.Field(4 + i).(*array.TimestampBuilder)
		tb.Reserve(len(col))
		for _, v := range col {
			tb.UnsafeAppend(arrow.Timestamp(v))
		}
	}
	rb.Field(6).(*array.StringBuilder).AppendValues(b.Properties, nil)
	rb.Field(7).(*array.Uint64Builder).AppendValues(b.Seq, nil)
	rec := rb.NewRecordBatch()
	defer rec.Release()

	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema), ipc.WithAllocator(mem), ipc.WithZstd())
	if err := w.Write(rec); err != nil {
		panic(err)
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// arrowDecode reads the stream back into Go columns, what the sink needs
// to append to ClickHouse.
func arrowDecode(data []byte) (*batch.Batch, error) {
	r, err := ipc.NewReader(bytes.NewReader(data), ipc.WithAllocator(memory.DefaultAllocator))
	if err != nil {
		return nil, err
	}
	defer r.Release()
	if !r.Next() {
		return nil, fmt.Errorf("no record: %v", r.Err())
	}
	rec := r.RecordBatch()
	n := int(rec.NumRows())
	strs := func(i int) []string {
		a := rec.Column(i).(*array.String)
		out := make([]string, n)
		for j := range out {
			out[j] = strings.Clone(a.Value(j))
		}
		return out
	}
	ts := func(i int) []int64 {
		a := rec.Column(i).(*array.Timestamp)
		out := make([]int64, n)
		for j := range out {
			out[j] = int64(a.Value(j))
		}
		return out
	}
	b := &batch.Batch{
		EventID: strs(0), Tenant: strs(1), UserID: strs(2), Type: strs(3),
		TS: ts(4), ReceivedAt: ts(5), Properties: strs(6),
		Seq: append([]uint64(nil), rec.Column(7).(*array.Uint64).Uint64Values()...),
	}
	return b, nil
}

func TestArrowRoundTrip(t *testing.T) {
	b := sampleBatch(10_000, 100)
	got, err := arrowDecode(arrowEncode(b))
	if err != nil {
		t.Fatal(err)
	}
	if got.Len() != b.Len() || got.EventID[9999] != b.EventID[9999] || got.TS[5] != b.TS[5] || got.Seq[9999] != b.Seq[9999] {
		t.Fatal("arrow round trip differs")
	}
}

func bench(b *testing.B, encode func(*batch.Batch) []byte, decode func([]byte) (*batch.Batch, error), doDecode bool) {
	bt := sampleBatch(10_000, 100)
	data := encode(bt)
	b.SetBytes(int64(eventBytes(bt)))
	b.ReportAllocs()
	for b.Loop() {
		if doDecode {
			if _, err := decode(data); err != nil {
				b.Fatal(err)
			}
		} else {
			data = encode(bt)
		}
	}
	b.ReportMetric(float64(len(data)), "encoded_B")
	b.ReportMetric(float64(bt.Len()*b.N)/b.Elapsed().Seconds(), "rows/s")
}

func BenchmarkEncode(b *testing.B) {
	b.Run("surge", func(b *testing.B) { bench(b, batch.Encode, batch.Decode, false) })
	b.Run("arrow-ipc-zstd", func(b *testing.B) { bench(b, arrowEncode, arrowDecode, false) })
}

func BenchmarkDecode(b *testing.B) {
	b.Run("surge", func(b *testing.B) { bench(b, batch.Encode, batch.Decode, true) })
	b.Run("arrow-ipc-zstd", func(b *testing.B) { bench(b, arrowEncode, arrowDecode, true) })
}
