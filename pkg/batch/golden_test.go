package batch_test

import (
	"flag"
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

func TestGoldenV1(t *testing.T) {
	want := golden(t, "batch_v1.golden", batch.Encode(goldenV1()))
	got, err := batch.Decode(want)
	require.NoError(t, err)
	require.Equal(t, goldenV1(), got)
}
