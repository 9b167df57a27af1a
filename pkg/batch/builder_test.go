package batch_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

// msgOf makes a message of rows events of exactly size bytes each.
func msgOf(rows, size int) []event.Event {
	e := event.Event{EventID: "e", Tenant: "t", UserID: "u", Type: "x"}
	e.Properties = string(make([]byte, size-e.Size()))
	out := make([]event.Event, rows)
	for i := range out {
		out[i] = e
	}
	return out
}

func TestBuilderCutsByRows(t *testing.T) {
	p := batch.Policy{MaxRows: 10, MaxBytes: 1 << 20, MaxAge: time.Second}
	b := batch.NewBuilder(3, p)
	now := time.Unix(100, 0)
	require.False(t, b.Add(1, msgOf(3, 100), now))
	require.False(t, b.Add(2, msgOf(3, 100), now))
	require.False(t, b.Add(3, msgOf(3, 100), now))
	require.False(t, b.Fits(3, 300), "12 rows would pass MaxRows")
	require.True(t, b.Fits(1, 100), "10 rows is the limit, still fits")
	require.True(t, b.Add(4, msgOf(1, 100), now), "full at MaxRows")
	require.Equal(t, 10, b.Len())
	require.Equal(t, 1000, b.Bytes())

	got := b.Cut()
	require.Equal(t, 3, got.Shard)
	require.Equal(t, uint64(1), got.FirstSeq)
	require.Equal(t, uint64(4), got.LastSeq)
	require.Equal(t, "3:1-4", got.ID())
	require.Equal(t, []uint64{1, 1, 1, 2, 2, 2, 3, 3, 3, 4}, got.Seq)
	require.Equal(t, 0, b.Len())
	require.Equal(t, 0, b.Bytes())
	require.Nil(t, b.Cut(), "an empty builder cuts nothing")
}

func TestBuilderCutsByBytes(t *testing.T) {
	p := batch.Policy{MaxRows: 1000, MaxBytes: 1000, MaxAge: time.Second}
	b := batch.NewBuilder(0, p)
	now := time.Unix(100, 0)
	require.False(t, b.Add(7, msgOf(2, 200), now))
	require.True(t, b.Fits(3, 600), "exactly MaxBytes fits")
	require.False(t, b.Fits(3, 601))
	require.True(t, b.Add(8, msgOf(3, 200), now), "full at MaxBytes")
	require.Equal(t, 1000, b.Bytes())
	require.Equal(t, "0:7-8", b.Cut().ID())
}

func TestBuilderDeadline(t *testing.T) {
	p := batch.Policy{MaxRows: 100, MaxBytes: 1 << 20, MaxAge: 250 * time.Millisecond}
	b := batch.NewBuilder(0, p)
	require.True(t, b.Deadline().IsZero(), "no deadline while empty")
	opened := time.Unix(100, 0)
	b.Add(1, msgOf(1, 50), opened)
	b.Add(2, msgOf(1, 50), opened.Add(200*time.Millisecond))
	require.Equal(t, opened.Add(250*time.Millisecond), b.Deadline(), "the first message starts the clock")
	b.Cut()
	require.True(t, b.Deadline().IsZero())
	later := opened.Add(time.Hour)
	b.Add(3, msgOf(1, 50), later)
	require.Equal(t, later.Add(250*time.Millisecond), b.Deadline())
}

func TestBuilderTakesAnOversizedMessageAlone(t *testing.T) {
	p := batch.Policy{MaxRows: 10, MaxBytes: 1024, MaxAge: time.Second}
	b := batch.NewBuilder(1, p)
	require.True(t, b.Fits(50, 1<<20), "an empty batch takes any message")
	require.True(t, b.Add(9, msgOf(50, 100), time.Unix(1, 0)))
	require.False(t, b.Fits(1, 20))
	got := b.Cut()
	require.Equal(t, 50, got.Len())
	require.Equal(t, "1:9-9", got.ID())
}

func TestBuilderSkipsEmptyMessages(t *testing.T) {
	b := batch.NewBuilder(0, batch.DefaultPolicy())
	require.False(t, b.Add(1, nil, time.Unix(1, 0)))
	require.Equal(t, 0, b.Len())
	require.True(t, b.Deadline().IsZero())
	b.Add(2, msgOf(1, 50), time.Unix(1, 0))
	require.Equal(t, "0:2-2", b.Cut().ID())
}

func TestAfter(t *testing.T) {
	b := &batch.Batch{Shard: 2}
	b.Append(10, msgOf(2, 40))
	b.Append(11, msgOf(1, 40))
	b.Append(14, msgOf(3, 40))
	for _, tt := range []struct {
		name      string
		watermark uint64
		first     uint64
		seqs      []uint64
	}{
		{"below the batch", 0, 10, []uint64{10, 10, 11, 14, 14, 14}},
		{"just below", 9, 10, []uint64{10, 10, 11, 14, 14, 14}},
		{"inside", 10, 11, []uint64{11, 14, 14, 14}},
		{"in a gap", 12, 14, []uint64{14, 14, 14}},
		{"at the last", 14, 0, []uint64{}},
		{"above", 99, 0, []uint64{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := b.After(tt.watermark)
			require.Equal(t, 2, got.Shard)
			require.Equal(t, uint64(14), got.LastSeq)
			require.Equal(t, tt.first, got.FirstSeq)
			require.Equal(t, tt.seqs, append([]uint64{}, got.Seq...))
			require.Equal(t, len(tt.seqs), got.Len())
			for _, col := range [][]string{got.Tenant, got.UserID, got.Type, got.Properties} {
				require.Len(t, col, len(tt.seqs))
			}
			require.Len(t, got.TS, len(tt.seqs))
			require.Len(t, got.ReceivedAt, len(tt.seqs))
		})
	}
	require.Same(t, b, b.After(3), "nothing dropped: the batch itself")
}

func TestWithout(t *testing.T) {
	b := &batch.Batch{Shard: 2}
	b.Append(10, msgOf(2, 40))
	b.Append(11, msgOf(1, 40))
	b.Append(14, msgOf(3, 40))
	for _, tt := range []struct {
		name        string
		drop        []uint64
		first, last uint64
		seqs        []uint64
	}{
		{"nothing", nil, 10, 14, []uint64{10, 10, 11, 14, 14, 14}},
		{"the first", []uint64{10}, 11, 14, []uint64{11, 14, 14, 14}},
		{"the middle", []uint64{11}, 10, 14, []uint64{10, 10, 14, 14, 14}},
		{"the last and unknown ones", []uint64{14, 99}, 10, 11, []uint64{10, 10, 11}},
		{"all", []uint64{10, 11, 14}, 0, 0, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			drop := map[uint64]struct{}{}
			for _, s := range tt.drop {
				drop[s] = struct{}{}
			}
			got := b.Without(drop)
			require.Equal(t, 2, got.Shard)
			require.Equal(t, tt.first, got.FirstSeq)
			require.Equal(t, tt.last, got.LastSeq)
			require.Equal(t, tt.seqs, got.Seq)
			for _, col := range [][]string{got.EventID, got.Tenant, got.UserID, got.Type, got.Properties} {
				require.Len(t, col, len(tt.seqs))
			}
			require.Len(t, got.TS, len(tt.seqs))
			require.Len(t, got.ReceivedAt, len(tt.seqs))
		})
	}
}

func TestPolicyValidate(t *testing.T) {
	require.NoError(t, batch.DefaultPolicy().Validate())
	err := batch.Policy{}.Validate()
	require.ErrorContains(t, err, "max_rows")
	require.ErrorContains(t, err, "max_bytes")
	require.ErrorContains(t, err, "max_age")
}
