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

// add is one message offered to a builder: Admit first, then Add.
type add struct {
	rows, size int             // events and bytes per event
	admit      batch.CutReason // want from Admit before the message
	full       batch.CutReason // want from Add
	cut        bool            // cut before adding, as the batcher does on admit != ""
}

func TestBuilderReportsWhyItCuts(t *testing.T) {
	for _, tt := range []struct {
		name   string
		policy batch.Policy
		adds   []add
		// lens are the rows of every batch cut, the open one last.
		lens []int
	}{
		{
			name:   "rows limit reached exactly",
			policy: batch.Policy{MaxRows: 10, MaxBytes: 1 << 20, MaxAge: time.Second},
			adds: []add{
				{rows: 3, size: 100}, {rows: 3, size: 100}, {rows: 3, size: 100},
				{rows: 1, size: 100, full: batch.CutRows},
			},
			lens: []int{10},
		},
		{
			name:   "rows limit would be passed",
			policy: batch.Policy{MaxRows: 10, MaxBytes: 1 << 20, MaxAge: time.Second},
			adds: []add{
				{rows: 3, size: 100}, {rows: 3, size: 100}, {rows: 3, size: 100},
				{rows: 3, size: 100, admit: batch.CutRows, cut: true},
			},
			lens: []int{9, 3},
		},
		{
			name:   "bytes limit reached exactly",
			policy: batch.Policy{MaxRows: 1000, MaxBytes: 1000, MaxAge: time.Second},
			adds: []add{
				{rows: 2, size: 200},
				{rows: 3, size: 200, full: batch.CutBytes},
			},
			lens: []int{5},
		},
		{
			name:   "bytes limit would be passed by one byte",
			policy: batch.Policy{MaxRows: 1000, MaxBytes: 1000, MaxAge: time.Second},
			adds: []add{
				{rows: 2, size: 200},
				{rows: 1, size: 601, admit: batch.CutBytes, cut: true, full: ""},
			},
			lens: []int{2, 1},
		},
		{
			name:   "both limits would be passed: rows wins",
			policy: batch.Policy{MaxRows: 10, MaxBytes: 1024, MaxAge: time.Second},
			adds: []add{
				{rows: 5, size: 100},
				{rows: 6, size: 100, admit: batch.CutRows, cut: true},
			},
			lens: []int{5, 6},
		},
		{
			name:   "both limits reached: rows wins",
			policy: batch.Policy{MaxRows: 10, MaxBytes: 1024, MaxAge: time.Second},
			adds: []add{
				{rows: 10, size: 103, full: batch.CutRows},
			},
			lens: []int{10},
		},
		{
			name:   "oversized message alone",
			policy: batch.Policy{MaxRows: 10, MaxBytes: 1024, MaxAge: time.Second},
			adds: []add{
				{rows: 50, size: 100, full: batch.CutRows}, // an empty batch admits anything
			},
			lens: []int{50},
		},
		{
			name:   "oversized message after others",
			policy: batch.Policy{MaxRows: 100, MaxBytes: 1024, MaxAge: time.Second},
			adds: []add{
				{rows: 1, size: 100},
				{rows: 1, size: 4096, admit: batch.CutBytes, cut: true, full: batch.CutBytes},
			},
			lens: []int{1, 1},
		},
		{
			name:   "within every limit",
			policy: batch.Policy{MaxRows: 10, MaxBytes: 1 << 20, MaxAge: time.Second},
			adds:   []add{{rows: 3, size: 100}, {rows: 6, size: 100}},
			lens:   []int{9},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := batch.NewBuilder(3, tt.policy)
			now := time.Unix(100, 0)
			var lens []int
			for i, a := range tt.adds {
				require.Equal(t, a.admit, b.Admit(a.rows, a.rows*a.size), "admit of message %d", i+1)
				if a.cut {
					lens = append(lens, b.Cut().Len())
				}
				require.Equal(t, a.full, b.Add(uint64(i+1), msgOf(a.rows, a.size), now), "add of message %d", i+1)
			}
			lens = append(lens, b.Cut().Len())
			require.Equal(t, tt.lens, lens)
		})
	}
}

func TestBuilderCut(t *testing.T) {
	p := batch.Policy{MaxRows: 10, MaxBytes: 1 << 20, MaxAge: time.Second}
	b := batch.NewBuilder(3, p)
	now := time.Unix(100, 0)
	for seq := range uint64(3) {
		require.Empty(t, b.Add(seq+1, msgOf(3, 100), now))
	}
	require.Equal(t, batch.CutRows, b.Add(4, msgOf(1, 100), now))
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

func TestBuilderDeadline(t *testing.T) {
	p := batch.Policy{MaxRows: 100, MaxBytes: 1 << 20, MaxAge: 250 * time.Millisecond}
	b := batch.NewBuilder(0, p)
	require.True(t, b.Deadline().IsZero(), "no deadline while empty")
	require.Empty(t, b.Expired(time.Unix(1e9, 0)), "an empty batch never expires")
	opened := time.Unix(100, 0)
	b.Add(1, msgOf(1, 50), opened)
	b.Add(2, msgOf(1, 50), opened.Add(200*time.Millisecond))
	require.Equal(t, opened.Add(250*time.Millisecond), b.Deadline(), "the first message starts the clock")
	require.Empty(t, b.Expired(opened.Add(249*time.Millisecond)))
	require.Equal(t, batch.CutAge, b.Expired(opened.Add(250*time.Millisecond)), "due at the deadline exactly")
	b.Cut()
	require.True(t, b.Deadline().IsZero())
	later := opened.Add(time.Hour)
	b.Add(3, msgOf(1, 50), later)
	require.Equal(t, later.Add(250*time.Millisecond), b.Deadline())
}

func TestBuilderSkipsEmptyMessages(t *testing.T) {
	b := batch.NewBuilder(0, batch.Policy{MaxRows: 1, MaxBytes: 1024, MaxAge: time.Second})
	require.Empty(t, b.Add(1, nil, time.Unix(1, 0)))
	require.Equal(t, 0, b.Len())
	require.True(t, b.Deadline().IsZero())
	require.Equal(t, batch.CutRows, b.Add(2, msgOf(1, 50), time.Unix(1, 0)))
	require.Equal(t, "0:2-2", b.Cut().ID())
}

func TestCutReasonsAreTheMetricLabels(t *testing.T) {
	var got []string
	for _, r := range batch.CutReasons {
		got = append(got, string(r))
	}
	require.Equal(t, []string{"rows", "bytes", "age", "shutdown", "idle"}, got)
}

// Ripe is MinAge after the first event of the open batch; zero when the
// batch is empty or the early cut is off.
func TestRipe(t *testing.T) {
	b := batch.NewBuilder(0, batch.Policy{MaxRows: 100, MaxBytes: 1 << 20, MaxAge: time.Second, MinAge: 200 * time.Millisecond})
	require.True(t, b.Ripe().IsZero())
	opened := time.Unix(10, 0)
	b.Add(1, msgOf(1, 50), opened)
	b.Add(2, msgOf(1, 50), opened.Add(150*time.Millisecond))
	require.Equal(t, opened.Add(200*time.Millisecond), b.Ripe())
	b.Cut()
	require.True(t, b.Ripe().IsZero())

	off := batch.NewBuilder(0, batch.Policy{MaxRows: 100, MaxBytes: 1 << 20, MaxAge: time.Second})
	off.Add(1, msgOf(1, 50), opened)
	require.True(t, off.Ripe().IsZero())
}

// Paced doubles the linger while batches wait for the sink, up to
// MaxAge, and halves it, down to MinAge, while the sink waits for them;
// Ripe follows it.
func TestPacedFollowsTheSink(t *testing.T) {
	b := batch.NewBuilder(0, batch.Policy{MaxRows: 100, MaxBytes: 1 << 20, MaxAge: time.Second, MinAge: 200 * time.Millisecond})
	opened := time.Unix(10, 0)
	b.Add(1, msgOf(1, 50), opened)
	var got []time.Duration
	for _, waited := range []bool{true, true, true, true, false, false, false, false, true} {
		b.Paced(waited)
		got = append(got, b.Linger())
	}
	ms := time.Millisecond
	require.Equal(t, []time.Duration{400 * ms, 800 * ms, time.Second, time.Second, 500 * ms, 250 * ms, 200 * ms, 200 * ms, 400 * ms}, got)
	require.Equal(t, opened.Add(400*ms), b.Ripe())

	off := batch.NewBuilder(0, batch.Policy{MaxRows: 100, MaxBytes: 1 << 20, MaxAge: time.Second})
	off.Paced(true)
	off.Add(1, msgOf(1, 50), opened)
	require.Zero(t, off.Linger())
	require.True(t, off.Ripe().IsZero(), "the early cut stays off")
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
	kept := b.Without(map[uint64]struct{}{99: {}})
	require.Same(t, &b.Properties[0], &kept.Properties[0], "nothing dropped: b's storage, not a copy")
}

func TestPolicyValidate(t *testing.T) {
	require.NoError(t, batch.DefaultPolicy().Validate())
	err := batch.Policy{}.Validate()
	require.ErrorContains(t, err, "max_rows")
	require.ErrorContains(t, err, "max_bytes")
	require.ErrorContains(t, err, "max_age")
	require.ErrorContains(t, batch.Policy{MaxRows: 1, MaxBytes: 1024, MaxAge: time.Second, MinAge: -time.Second}.Validate(), "min_age")
}

// BenchmarkBuilder fills batches of 10,000 rows from messages of 50
// events, as a shard loop under load does, and cuts each when full.
func BenchmarkBuilder(b *testing.B) {
	events := sampleEvents(1, 10_000)
	p := batch.DefaultPolicy()
	bl := batch.NewBuilder(0, p)
	now := time.Now()
	seq := uint64(1)
	b.ReportAllocs()
	for b.Loop() {
		for i := 0; i < len(events); i += 50 {
			msg := events[i : i+50]
			if bl.Admit(len(msg), 50*200) != "" {
				bl.Cut()
			}
			bl.Add(seq, msg, now)
			seq++
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(events)), "ns/event")
}
