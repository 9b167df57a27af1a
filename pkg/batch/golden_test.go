package batch_test

import (
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

// update rewrites the golden files from the current encoder:
// go test ./pkg/batch -run Golden -update
var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current encoder")

// goldenV1 is a fixed unprojected batch: the bytes it encodes to must never
// change, so old and new batchers and sinks read each other's messages.
func goldenV1() *batch.Batch {
	at := time.Date(2025, 6, 1, 8, 30, 0, 250_000, time.UTC)
	b := &batch.Batch{Shard: 3}
	b.Append(41, []event.Event{
		{EventID: "01JX0000000000000000000001", Tenant: "acme", UserID: "u-1", Type: "page_view", TS: at, ReceivedAt: at.Add(time.Second), Properties: `{"page":"/home"}`},
		{EventID: "01JX0000000000000000000002", Tenant: "acme", UserID: "u-2", Type: "click", TS: at.Add(-time.Minute), ReceivedAt: at.Add(time.Second), Properties: `{}`},
	})
	b.Append(44, []event.Event{
		{EventID: "01JX0000000000000000000003", Tenant: "globex", UserID: "", Type: "purchase", TS: time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC), ReceivedAt: at.Add(2 * time.Second), Properties: `{"price":12.5,"ключ":"🎉"}`},
	})
	return b
}

// golden compares got with the golden file name, or rewrites it with
// -update. The comparison is of the format this package owns: the magic
// and the uncompressed columns, so a zstd upgrade that compresses the same
// columns to other bytes is not a format change.
func golden(t *testing.T, name string, got []byte) []byte {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, want[:4], got[:4], "magic and version")
	require.Equal(t, rawOf(t, want), rawOf(t, got), "columns of %s", path)
	return want
}

// goldenV2 is a fixed projected batch with a column of every kind: NULL
// rows, NULL elements, empty arrays, extreme integers, floats whose bits
// must survive (a NaN with a payload, -0, infinities, the least
// subnormal). Its rows came in three messages: seen_at has values only in
// the first message's rows, name only in the second's.
func goldenV2() *batch.Batch {
	at := time.Date(2025, 6, 1, 8, 30, 0, 0, time.UTC)
	b := &batch.Batch{Shard: 6}
	row := func(id, typ string) event.Event {
		return event.Event{EventID: id, Tenant: "acme", UserID: "u-" + id, Type: typ, TS: at, ReceivedAt: at.Add(time.Second), Properties: `{"k":1}`}
	}
	b.Append(41, []event.Event{row("e0", "page_view"), row("e1", "click")})
	b.Append(44, []event.Event{row("e2", "click"), row("e3", "purchase")})
	b.Append(47, []event.Event{row("e4", "signup")})
	nan := math.Float64frombits(0x7ff8_0000_dead_beef)
	b.Conflicts = []string{"", `{"/count":"many"}`, "", "", `{"/ratio":true}`}
	b.Unpromoted = [][]string{nil, {"/deep/x"}, nil, {"/a", "/b"}, nil}
	b.Typed = []batch.Column{
		scalarCol("count", batch.Int64, int64(math.MinInt64), 0, nil, int64(math.MaxInt64), -1),
		scalarCol("flag", batch.Bool, true, nil, false, true, nil),
		arrayCol("flags", batch.Bool, []any{true, false}, []any{}, []any{nil}, nil, []any{false, nil, true}),
		arrayCol("ids", batch.Int64, []any{1, 2, 3}, []any{nil}, nil, []any{int64(math.MinInt64), int64(math.MaxInt64)}, nil),
		scalarCol("name", batch.String, nil, nil, "ключ 🎉", "a\x00b\xff", nil),
		scalarCol("ratio", batch.Float64, nan, math.Copysign(0, -1), nil, math.Inf(1), math.SmallestNonzeroFloat64),
		arrayCol("scores", batch.Float64, []any{nan, math.Inf(-1)}, nil, []any{nil, 0.5}, nil, []any{math.Copysign(0, -1)}),
		scalarCol("seen_at", batch.DateTime, time.Date(1901, 1, 1, 0, 0, 0, 0, time.UTC), time.Unix(0, 0), nil, nil, nil),
		arrayCol("tags", batch.String, []any{"a", ""}, []any{nil}, nil, []any{"日本"}, []any{}),
	}
	return b
}

func TestGoldenV2(t *testing.T) {
	want := golden(t, "batch_v2.golden", batch.Encode(goldenV2()))
	got, err := batch.Decode(want)
	require.NoError(t, err)
	requireSameBatch(t, goldenV2(), got)
}

func TestGoldenV1(t *testing.T) {
	want := golden(t, "batch_v1.golden", batch.Encode(goldenV1()))
	got, err := batch.Decode(want)
	require.NoError(t, err)
	require.Equal(t, goldenV1(), got)
}
