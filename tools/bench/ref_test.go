package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/testkit/chserver"
)

// TestReferenceInsertsTheRunsOwnRows reads a table's rows, typed columns
// and all, and inserts them again through the driver in blocks: the copy
// holds exactly the same rows.
func TestReferenceInsertsTheRunsOwnRows(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a clickhouse-server")
	}
	ctx := context.Background()
	c, err := chserver.StartCluster(ctx, t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(c.Stop)
	ch, err := clickhouse.Open(&clickhouse.Options{Addr: c.Addrs()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ch.Close() })

	var defs []string
	for _, col := range batch.BaseColumns {
		defs = append(defs, col.Name+" "+col.Type)
	}
	defs = append(defs, "p_n Nullable(Int64)", "p_tags Array(Nullable(String))")
	for _, q := range []string{
		"CREATE DATABASE src",
		"CREATE TABLE src.events_local (" + strings.Join(defs, ", ") + ") ENGINE = MergeTree ORDER BY (tenant, type, ts, event_id)",
		"CREATE DATABASE dst",
		"CREATE TABLE dst.events_local AS src.events_local",
		// 25 rows over two shards, each shard's sequence in reverse of
		// the insert order, so the read's order is its own.
		`INSERT INTO src.events_local SELECT toString(number), 't', concat('u', toString(number % 3)), 'page',
			toDateTime(1700000000 + number, 'UTC'), toDateTime(1700000100, 'UTC'), concat('{"n":', toString(number), '}'),
			number % 2, 100 - number, if(number = 4, '[{"path":"/n"}]', ''), if(number = 5, ['/x'], emptyArrayString()),
			if(number % 5 = 0, NULL, toInt64(number) - 10), [if(number % 7 = 0, NULL, toString(number)), 'a']
			FROM system.numbers LIMIT 25`,
	} {
		require.NoError(t, ch.Exec(ctx, q), q)
	}

	own, err := ownRows(ctx, ch, "src", 1000)
	require.NoError(t, err)
	assert.Equal(t, 25, own.n)
	assert.Equal(t, []string{"p_n", "p_tags"}, own.typed)
	// Each shard's rows in the order the sink inserted them: seq up.
	var first []string
	for r := range 3 {
		first = append(first, fmt.Sprint(own.cols[7].Index(r).Interface(), "/", own.cols[8].Index(r).Interface()))
	}
	assert.Equal(t, []string{"0/76", "0/78", "0/80"}, first)

	for from := 0; from < own.n; from += 10 {
		require.NoError(t, own.insert(ctx, ch, "dst", from, min(from+10, own.n)))
	}
	dump := func(db string) string {
		t.Helper()
		var out string
		// Sorted in the array: threads may aggregate in any order.
		q := "SELECT toString(arraySort(groupArray(tuple(*)))) FROM " + db + ".events_local"
		require.NoError(t, ch.QueryRow(ctx, q).Scan(&out))
		return out
	}
	want := dump("src")
	assert.Contains(t, want, `'[{"path":"/n"}]'`) // the dump shows what it compares
	assert.Equal(t, want, dump("dst"))

	// A block repeated: its columns are the base ones, inserted alone.
	syn := syntheticBlock()
	require.NoError(t, syn.insert(ctx, ch, "dst", 0, syn.n))
	var n uint64
	require.NoError(t, ch.QueryRow(ctx, "SELECT count() FROM dst.events_local WHERE p_n IS NULL AND startsWith(event_id, 'ref-')").Scan(&n))
	assert.Equal(t, uint64(syn.n), n)
}

// TestReferenceBlocks takes a quota of rows from fewer rows over and
// over, in blocks of at most 10,000 cut where the rows end.
func TestReferenceBlocks(t *testing.T) {
	var got [][2]int
	total := 0
	for k := 0; ; k++ {
		from, to, ok := referenceBlock(k, 25_000, 62_000)
		if !ok {
			break
		}
		got, total = append(got, [2]int{from, to}), total+to-from
	}
	assert.Equal(t, [][2]int{
		{0, 10_000}, {10_000, 20_000}, {20_000, 25_000},
		{0, 10_000}, {10_000, 20_000}, {20_000, 25_000},
		{0, 10_000}, {10_000, 12_000},
	}, got)
	assert.Equal(t, 62_000, total)
	// Fewer rows than a block, and a quota under them.
	from, to, ok := referenceBlock(0, 300, 120)
	assert.Equal(t, []any{0, 120, true}, []any{from, to, ok})
	_, _, ok = referenceBlock(1, 300, 120)
	assert.False(t, ok)
}
