package status

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func at(ago time.Duration) *time.Time {
	t := now.Add(-ago)
	return &t
}

func u64(v uint64) *uint64 { return &v }

// healthy is a report with nothing wrong: two owned shards, nothing
// waiting, every stream at one current replica, every instance ready.
func healthy() Report {
	return Report{
		Time:      now,
		Ownership: map[string]string{"batcher": "static", "sink": "static"},
		Ingest:    Backlog{Consumer: "partitioner", LastProgress: at(time.Second)},
		Shards: []Shard{
			{Shard: 0, BatcherOwner: "batcher", SinkOwner: "sink", Events: Backlog{Consumer: "e0"}, Batches: Backlog{Consumer: "sink-shard-0"}, Watermark: u64(10), Rows: u64(10)},
			{Shard: 1, BatcherOwner: "batcher", SinkOwner: "sink", Events: Backlog{Consumer: "e1"}, Batches: Backlog{Consumer: "sink-shard-1"}, Watermark: u64(7), Rows: u64(7)},
		},
		Streams: []Stream{
			{Name: "INGEST", MaxBytes: 1000, Bytes: 0, Replicas: 1, Current: 1},
			{Name: "EVENTS", MaxBytes: 1000, Bytes: 799, Replicas: 3, Current: 3, Leader: "n1"},
			{Name: "BATCHES", MaxBytes: 1000, Replicas: 1, Current: 1},
			{Name: "DEAD_LETTER", MaxBytes: -1, Replicas: 1, Current: 1},
		},
		DeadLetters: map[string]uint64{},
		Instances: []Instance{
			{Name: "batcher", Service: "batcher", Addr: "127.0.0.1:1", Ready: true},
			{Name: "sink", Service: "sink", Addr: "127.0.0.1:2", Ready: true},
		},
		ClickHouse: []Server{{Addr: "127.0.0.1:9440"}},
		Schemas: []TableSchema{
			{Table: "events", Revision: 3, Columns: 2, Limit: 200, LimitFrom: "batchers", Checked: true, Conflicts: u64(6), Rows: u64(1200)},
		},
	}
}

func TestAssess(t *testing.T) {
	th := Thresholds{MaxLag: 10 * time.Second, Stall: 30 * time.Second, StreamFull: 0.8}
	tests := []struct {
		name   string
		change func(r *Report)
		want   []string // Problem.String() of each problem, in order
	}{
		{name: "healthy", change: func(*Report) {}},
		{
			name: "backlog younger than the lag threshold is healthy",
			change: func(r *Report) {
				r.Shards[1].Batches = Backlog{Consumer: "sink-shard-1", Pending: 40, Oldest: at(9 * time.Second), LastProgress: at(time.Second)}
			},
		},
		{
			name: "lagging: oldest waiting past the threshold while progress goes on",
			change: func(r *Report) {
				r.Shards[1].Batches = Backlog{Consumer: "sink-shard-1", Pending: 40, Oldest: at(12 * time.Second), LastProgress: at(time.Second)}
			},
			want: []string{"shard 1 lagging: 40 waiting in BATCHES, oldest 12s"},
		},
		{
			name: "stalled: no progress since the oldest arrived",
			change: func(r *Report) {
				r.Shards[0].Events = Backlog{Consumer: "e0", Pending: 3, Oldest: at(45 * time.Second), LastProgress: at(5 * time.Minute)}
			},
			want: []string{"shard 0 stalled: 3 waiting in EVENTS, oldest 45s, no progress for 45s"},
		},
		{
			name: "work that arrived after a long idle time is not a stall",
			change: func(r *Report) {
				r.Shards[0].Batches = Backlog{Consumer: "sink-shard-0", Pending: 1, Oldest: at(2 * time.Second), LastProgress: at(time.Hour)}
			},
		},
		{
			name: "stalled without a known progress time, from the oldest's age",
			change: func(r *Report) {
				r.Shards[1].Batches = Backlog{Consumer: "sink-shard-1", Pending: 2, Oldest: at(31 * time.Second)}
			},
			want: []string{"shard 1 stalled: 2 waiting in BATCHES, oldest 31s, no progress for 31s"},
		},
		{
			name: "the sink's watchdog names the stall before the threshold",
			change: func(r *Report) {
				r.Shards[1].Batches = Backlog{Consumer: "sink-shard-1", Pending: 2, Oldest: at(5 * time.Second), LastProgress: at(6 * time.Second)}
				r.Instances[1].Ready = false
				r.Instances[1].Reasons = []string{"stalled shard 1: 2 pending, no progress for 3s, waiting on insert into clickhouse 127.0.0.1:9440"}
			},
			want: []string{
				"shard 1 stalled: 2 waiting in BATCHES, oldest 5s, no progress for 5s (sink: stalled shard 1: 2 pending, no progress for 3s, waiting on insert into clickhouse 127.0.0.1:9440)",
				"sink not ready: stalled shard 1: 2 pending, no progress for 3s, waiting on insert into clickhouse 127.0.0.1:9440",
			},
		},
		{
			name: "a batcher's stall is the EVENTS hop's, not the sink's",
			change: func(r *Report) {
				r.Instances[0].Ready = false
				r.Instances[0].Reasons = []string{"stalled shard 0: 9 pending, no progress for 30s, waiting on publish to BATCHES"}
				r.Shards[0].Events = Backlog{Consumer: "e0", Pending: 9, Oldest: at(31 * time.Second), LastProgress: at(40 * time.Second)}
			},
			want: []string{
				"shard 0 stalled: 9 waiting in EVENTS, oldest 31s, no progress for 31s (batcher: stalled shard 0: 9 pending, no progress for 30s, waiting on publish to BATCHES)",
				"batcher not ready: stalled shard 0: 9 pending, no progress for 30s, waiting on publish to BATCHES",
			},
		},
		{
			name: "INGEST lagging names the partitioner",
			change: func(r *Report) {
				r.Ingest = Backlog{Consumer: "partitioner", Pending: 500, Oldest: at(20 * time.Second), LastProgress: at(time.Second)}
			},
			want: []string{"partitioner lagging: 500 waiting in INGEST, oldest 20s"},
		},
		{
			name: "lease mode: a shard nobody holds",
			change: func(r *Report) {
				r.Ownership["sink"] = "lease"
				r.Shards[1].SinkOwner = ""
				r.Shards[1].Batches = Backlog{Consumer: "sink-shard-1", Pending: 4, Oldest: at(time.Minute)}
			},
			want: []string{"shard 1 unowned: no sink owns it (lease ownership)"},
		},
		{
			name: "nothing reads a shard's events",
			change: func(r *Report) {
				r.Shards[0].Events = Backlog{}
			},
			want: []string{"shard 0 no consumer: no batcher consumer reads events.shard.0"},
		},
		{
			name: "no shard found",
			change: func(r *Report) {
				r.Shards = nil
			},
			want: []string{"shards no consumer: no shard found: no consumer reads EVENTS or BATCHES, no lease is held, ClickHouse holds no rows (give --shards to name them)"},
		},
		{
			name: "stream at the fill threshold",
			change: func(r *Report) {
				r.Streams[1].Bytes = 800
			},
			want: []string{"stream EVENTS stream full: 800 B of its 1000 B limit (80%)"},
		},
		{
			name: "stream message limit",
			change: func(r *Report) {
				r.Streams[2].MaxMsgs, r.Streams[2].Messages = 100, 90
			},
			want: []string{"stream BATCHES stream full: 90 of its 100 message limit"},
		},
		{
			name: "replica behind",
			change: func(r *Report) {
				r.Streams[1].Current, r.Streams[1].Behind = 2, []string{"n3 (offline)"}
			},
			want: []string{"stream EVENTS replicas: 2 of 3 replicas current; behind: n3 (offline)"},
		},
		{
			name: "no leader",
			change: func(r *Report) {
				r.Streams[1].Leader, r.Streams[1].Current = "", 2
			},
			want: []string{"stream EVENTS replicas: no leader"},
		},
		{
			name: "missing stream",
			change: func(r *Report) {
				r.Streams[2] = Stream{Name: "BATCHES", Missing: true}
			},
			want: []string{"stream BATCHES missing: the stream does not exist"},
		},
		{
			name: "unreadable stream: its shards' hops are not judged on what could not be read",
			change: func(r *Report) {
				r.Streams[2] = Stream{Name: "BATCHES", Unreadable: "context deadline exceeded"}
				r.Shards[0].Batches, r.Shards[1].Batches = Backlog{}, Backlog{}
			},
			want: []string{"stream BATCHES unreadable: context deadline exceeded"},
		},
		{
			name: "stream read, its consumers not",
			change: func(r *Report) {
				r.Streams[1].Unreadable = "consumers of EVENTS: context deadline exceeded"
				r.Shards[0].Events, r.Shards[1].Events = Backlog{}, Backlog{}
				r.Streams[1].Bytes = 900
			},
			want: []string{"stream EVENTS unreadable: consumers of EVENTS: context deadline exceeded", "stream EVENTS stream full: 900 B of its 1000 B limit (90%)"},
		},
		{
			name: "lease bucket unreadable",
			change: func(r *Report) {
				r.Ownership = map[string]string{"batcher": "unknown", "sink": "unknown"}
				r.LeasesUnreadable = "lease bucket SURGE_LEASES: context deadline exceeded"
				r.Shards[0].BatcherOwner, r.Shards[0].SinkOwner = "?", "?"
			},
			want: []string{"leases unreadable: lease bucket SURGE_LEASES: context deadline exceeded"},
		},
		{
			name: "dead letters waiting",
			change: func(r *Report) {
				r.DeadLetters = map[string]uint64{"deadletter.sink.shard.1": 2, "deadletter.partitioner.invalid.demo": 1, "deadletter.batcher.shard.0": 0}
			},
			want: []string{"stream DEAD_LETTER dead letters: 3 waiting (deadletter.partitioner.invalid.demo: 1, deadletter.sink.shard.1: 2); inspect with `surge deadletter list`"},
		},
		{
			name: "instance not answering",
			change: func(r *Report) {
				r.Instances[0].Ready, r.Instances[0].Reasons = false, []string{"no answer: connection refused"}
			},
			want: []string{"batcher not ready: no answer: connection refused"},
		},
		{
			name: "clickhouse server down",
			change: func(r *Report) {
				r.ClickHouse[0].Error = "dial tcp 127.0.0.1:9440: connect: connection refused"
			},
			want: []string{"clickhouse 127.0.0.1:9440 unreachable: dial tcp 127.0.0.1:9440: connect: connection refused"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := healthy()
			tt.change(&r)
			r.Judge(th)
			got := make([]string, len(r.Problems))
			for i, p := range r.Problems {
				got[i] = p.String()
			}
			if tt.want == nil {
				tt.want = []string{}
			}
			assert.Equal(t, tt.want, got)
			assert.Equal(t, len(tt.want) == 0, r.Healthy)
		})
	}
}

func TestWarn(t *testing.T) {
	th := DefaultThresholds()
	pending := func(name string, ago time.Duration, missing ...string) PendingColumn {
		return PendingColumn{Name: name, Path: "/" + strings.TrimPrefix(name, "p_"), Added: now.Add(-ago), Missing: missing}
	}
	tests := []struct {
		name   string
		change func(r *Report)
		want   []string // Problem.String() of each warning, in order
	}{
		{name: "nothing to say", change: func(*Report) {}},
		{
			name: "a column pending DDL for less than the threshold is the sink at work",
			change: func(r *Report) {
				r.Schemas[0].Pending = []PendingColumn{pending("p_plan", 59*time.Second, "127.0.0.1:9440")}
			},
		},
		{
			name: "a column pending DDL from the threshold on",
			change: func(r *Report) {
				r.Schemas[0].Pending = []PendingColumn{
					pending("p_plan", time.Minute, "127.0.0.1:9440", "127.0.0.1:9441"),
					pending("p_new", 3*time.Second, "127.0.0.1:9440"),
				}
			},
			want: []string{"table events pending DDL: 1 column agreed 1m ago or more (the oldest 1m) and still missing: p_plan on 127.0.0.1:9440, 127.0.0.1:9441; `surge schema ls` shows each server"},
		},
		{
			name: "many columns pending: grouped by the servers lacking them, eight names a group",
			change: func(r *Report) {
				for i := range 10 {
					r.Schemas[0].Pending = append(r.Schemas[0].Pending, pending(fmt.Sprintf("p_%d", i), 2*time.Minute, "127.0.0.1:9440"))
				}
				r.Schemas[0].Pending = append(r.Schemas[0].Pending, pending("p_z", 5*time.Minute, "127.0.0.1:9440", "127.0.0.1:9441"))
			},
			want: []string{"table events pending DDL: 11 columns agreed 1m ago or more (the oldest 5m) and still missing: " +
				"p_0, p_1, p_2, p_3, p_4, p_5, p_6, p_7 and 2 more on 127.0.0.1:9440; p_z on 127.0.0.1:9440, 127.0.0.1:9441; `surge schema ls` shows each server"},
		},
		{
			name: "failed DDL",
			change: func(r *Report) {
				r.Schemas[0].Failed = []string{"p_huge", "p_wide"}
			},
			want: []string{"table events DDL failed: 2 columns whose DDL failed for good, no longer filled (the values stay in properties): p_huge, p_wide"},
		},
		{
			name: "a table at its column limit",
			change: func(r *Report) {
				r.Schemas[0].Columns, r.Schemas[0].Limit = 200, 200
			},
			want: []string{"table events column limit: 200 of 200 typed columns: new keys stay unpromoted (`surge schema unpromoted`)"},
		},
		{
			name: "one under the limit",
			change: func(r *Report) {
				r.Schemas[0].Columns, r.Schemas[0].Limit = 199, 200
			},
		},
		{
			name: "schema bucket unreadable",
			change: func(r *Report) {
				r.Schemas, r.SchemaUnreadable = nil, "schema bucket SURGE_SCHEMA: context deadline exceeded"
			},
			want: []string{"schema schema unreadable: schema bucket SURGE_SCHEMA: context deadline exceeded"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := healthy()
			tt.change(&r)
			r.Judge(th)
			got := make([]string, len(r.Warnings))
			for i, p := range r.Warnings {
				got[i] = p.String()
			}
			if tt.want == nil {
				tt.want = []string{}
			}
			assert.Equal(t, tt.want, got)
			assert.True(t, r.Healthy, "warnings leave the report healthy")
			assert.Equal(t, []Problem{}, r.Problems)
		})
	}
}

func TestShardsWith(t *testing.T) {
	problems := []Problem{
		{Kind: KindStalled, Shard: 5}, {Kind: KindLagging, Shard: 2}, {Kind: KindStalled, Shard: 1},
		{Kind: KindStalled, Shard: 5}, {Kind: KindNotReady, Shard: -1},
	}
	assert.Equal(t, []int{1, 5}, ShardsWith(problems, KindStalled))
	assert.Equal(t, []int{2}, ShardsWith(problems, KindLagging))
	assert.Empty(t, ShardsWith(problems, KindUnowned))
}

func TestFormats(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 850 * time.Millisecond: "850ms", 12400 * time.Millisecond: "12s",
		4*time.Minute + 10*time.Second: "4m10s", 4 * time.Minute: "4m", 3*time.Hour + 5*time.Minute: "3h5m",
		59600 * time.Millisecond: "1m", time.Hour - 300*time.Millisecond: "1h", 2 * time.Hour: "2h",
	} {
		assert.Equal(t, want, Age(d), d.String())
	}
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 8 << 30: "8.0 GiB"} {
		assert.Equal(t, want, Bytes(n))
	}
	for n, want := range map[uint64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567"} {
		assert.Equal(t, want, Count(n))
	}
}

// TestRender checks the screen of an unhealthy report: one row per shard
// with its figures, the streams, the instances and every problem.
func TestRender(t *testing.T) {
	r := healthy()
	rate := 1234.4
	r.Shards[0].RowsPerSecond = &rate
	r.Shards[0].LastInsert = at(2 * time.Second)
	r.Shards[1].Batches = Backlog{Consumer: "sink-shard-1", Pending: 3, Oldest: at(40 * time.Second), LastProgress: at(40 * time.Second)}
	r.Shards[1].Rows = nil
	r.Judge(DefaultThresholds())
	var buf bytes.Buffer
	require.NoError(t, Render(&buf, &r))
	out := buf.String()
	lines := strings.Split(out, "\n")
	assert.Contains(t, lines[0], "UNHEALTHY (1 problem)")
	assert.Regexp(t, `(?m)^0\s+batcher\s+sink\s+0\s+-\s+0\s+-\s+10\s+10\s+1,234\s+2s ago\s+0$`, out)
	assert.Regexp(t, `(?m)^1\s+batcher\s+sink\s+0\s+-\s+3\s+40s\s+7\s+\?\s+-\s+-\s+0$`, out)
	assert.Regexp(t, `(?m)^EVENTS\s+0\s+799 B\s+1000 B\s+80%\s+3/3 current, leader n1$`, out)
	assert.Regexp(t, `(?m)^DEAD_LETTER\s+0\s+0 B\s+none\s+-\s+1/1 current$`, out)
	assert.Regexp(t, `(?m)^sink\s+127.0.0.1:2\s+ready$`, out)
	assert.Contains(t, out, "PROBLEMS\n  shard 1 stalled: 3 waiting in BATCHES, oldest 40s, no progress for 40s\n")
	assert.Regexp(t, `(?m)^events\s+3\s+2/200\s+none\s+0\s+0\.5 per 100 rows \(6 values in 1,200 rows\)$`, out)

	buf.Reset()
	r = healthy()
	r.Judge(DefaultThresholds())
	require.NoError(t, Render(&buf, &r))
	assert.Contains(t, buf.String(), ": HEALTHY\n")
	assert.NotContains(t, buf.String(), "PROBLEMS")
	assert.NotContains(t, buf.String(), "WARNINGS")

	// Warnings: named in the verdict and listed last; the table of typed
	// columns names what is pending.
	buf.Reset()
	r = healthy()
	r.Schemas[0].Pending = []PendingColumn{
		{Name: "p_plan", Path: "/plan", Added: now.Add(-2 * time.Minute), Missing: []string{"127.0.0.1:9440"}},
		{Name: "p_new", Path: "/new", Added: now.Add(-3 * time.Second), Missing: []string{"127.0.0.1:9440", "127.0.0.1:9441"}},
	}
	r.Schemas[0].Failed = []string{"p_huge"}
	r.Schemas = append(r.Schemas, TableSchema{Table: "clicks", Revision: 4, Columns: 1, Limit: 200, LimitFrom: "default"})
	r.Judge(DefaultThresholds())
	require.NoError(t, Render(&buf, &r))
	out = buf.String()
	assert.Contains(t, out, ": HEALTHY, 2 warnings\n")
	assert.Regexp(t, `(?m)^TABLE\s+REVISION\s+COLUMNS\s+PENDING DDL\s+FAILED\s+CONFLICTS$`, out)
	assert.Regexp(t, `(?m)^events\s+3\s+2/200\s+p_plan 2m \(1 server\), p_new 3s \(2 servers\)\s+1\s+0\.5 per 100 rows \(6 values in 1,200 rows\)$`, out)
	assert.Regexp(t, `(?m)^clicks\s+4\s+1/200 \(default limit\)\s+\?\s+0\s+-$`, out)
	assert.True(t, strings.HasSuffix(out, "\nWARNINGS\n"+
		"  table events pending DDL: 1 column agreed 1m ago or more (the oldest 2m) and still missing: p_plan on 127.0.0.1:9440; `surge schema ls` shows each server\n"+
		"  table events DDL failed: 1 column whose DDL failed for good, no longer filled (the values stay in properties): p_huge\n"), out)
}
