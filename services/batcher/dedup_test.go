package batcher

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func dedupKeyOf(tenant, id string) dedupKey {
	k, _ := keyOf(nil, tenant, id)
	return k
}

// publishAt adds keys to the set as one batch published at t.
func publishAt(s *seenSet, t time.Time, keys ...dedupKey) {
	for _, k := range keys {
		s.check(k)
	}
	s.commit(s.cut(), t)
}

func TestSeenSetExpiresByWindow(t *testing.T) {
	window := 24 * time.Hour
	s := newSeenSet(window, 100)
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	publishAt(s, t0, dedupKeyOf("acme", "m1"))
	for _, tc := range []struct {
		after time.Duration
		has   bool
	}{
		{0, true},
		{window - time.Minute, true},
		{window, true}, // kept at least the window, at most one bucket longer
		{window + 2*window/seenBuckets, false},
	} {
		s.advance(t0.Add(tc.after))
		require.Equal(t, tc.has, s.has(dedupKeyOf("acme", "m1")), "after %s", tc.after)
	}
	require.Zero(t, s.len(), "expired keys leave the map")
	// A record older than the window adds nothing that lasts.
	publishAt(s, t0, dedupKeyOf("acme", "old"))
	s.advance(t0.Add(2 * window))
	require.False(t, s.has(dedupKeyOf("acme", "old")))
}

func TestSeenSetEvictsTheOldestBucketBeyondItsBound(t *testing.T) {
	s := newSeenSet(24*time.Hour, 4)
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	publishAt(s, t0, dedupKeyOf("a", "1"))
	publishAt(s, t0, dedupKeyOf("a", "2"))
	publishAt(s, t0.Add(time.Hour), dedupKeyOf("a", "3"))
	publishAt(s, t0.Add(2*time.Hour), dedupKeyOf("a", "4"))
	require.Equal(t, 4, s.len())
	publishAt(s, t0.Add(2*time.Hour), dedupKeyOf("a", "5")) // the fifth: the oldest hour goes
	require.Equal(t, 3, s.len())
	require.False(t, s.has(dedupKeyOf("a", "1")))
	require.False(t, s.has(dedupKeyOf("a", "2")))
	for _, id := range []string{"3", "4", "5"} {
		require.True(t, s.has(dedupKeyOf("a", id)), id)
	}
}

func TestSeenSetOpenAndUncommittedBatches(t *testing.T) {
	s := newSeenSet(24*time.Hour, 100)
	now := time.Now()
	k := dedupKeyOf("a", "1")
	require.False(t, s.check(k), "new")
	require.True(t, s.check(k), "in the open batch")
	held := s.cut() // cut, never published (held, lease lost)
	require.False(t, s.check(k), "its batch is not published: the copy passes")
	s.commit(s.cut(), now)
	require.True(t, s.check(k), "published")
	s.commit(held, now) // published late (finish): still held
	require.True(t, s.has(k))
}

func TestKeysSeparateTenantsAndIDs(t *testing.T) {
	require.NotEqual(t, dedupKeyOf("acme", "m1"), dedupKeyOf("other", "m1"))
	// The separator keeps "ab"+"c" apart from "a"+"bc".
	require.NotEqual(t, dedupKeyOf("ab", "c"), dedupKeyOf("a", "bc"))
	require.Equal(t, dedupKeyOf("acme", "m1"), dedupKeyOf("acme", "m1"))
}

// dedupLoop is newFakeLoop with deduplication on.
func dedupLoop(t *testing.T) (*shardLoop, *fakeJS, *dedupMetrics) {
	t.Helper()
	l, _, js, _, _ := newFakeLoop(t, time.Hour)
	m := newDedupMetrics(prometheus.NewRegistry())
	l.dedup = newDedup(DefaultDedupConfig(), &fakeStream{}, m, "3")
	return l, js, m
}

func dedupEvent(tenant, id string, generated bool) event.Event {
	return event.Event{EventID: id, IDGenerated: generated, Tenant: tenant, UserID: "u", Type: "t", Properties: "{}"}
}

func dedupIDs(events []event.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.Tenant + "/" + e.EventID
	}
	return out
}

// dedupTake is the shard loop's take without a JetStream message.
func dedupTake(l *shardLoop, seq uint64, events []event.Event) []event.Event {
	events = l.dedup.dropDuplicates(events, time.Now())
	l.builder.Add(seq, events, time.Now())
	return events
}

func TestDropsCopiesOfClientIDsOnly(t *testing.T) {
	l, js, m := dedupLoop(t)
	kept := dedupTake(l, 1, []event.Event{dedupEvent("acme", "m1", false), dedupEvent("acme", "m1", false), dedupEvent("acme", "g1", true), dedupEvent("acme", "g1", true), dedupEvent("other", "m1", false)})
	require.Equal(t, []string{"acme/m1", "acme/g1", "acme/g1", "other/m1"}, dedupIDs(kept),
		"a copy in the same message goes; generated ids never; the same id of another tenant stays")
	// A copy in a later message of the open batch goes too: the original
	// is published in the same batch.
	require.Empty(t, dedupTake(l, 2, []event.Event{dedupEvent("acme", "m1", false)}))
	l.cut(t.Context(), batch.CutAge)
	require.Len(t, js.published, 2, "the batch, then its dedup record")
	b, err := batch.Decode(js.published[0].Data)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 1, 1, 1}, b.Seq, "message 2 contributes no rows")
	require.Equal(t, uint64(1), b.LastSeq)
	rec := js.published[1]
	require.Equal(t, streams.DedupSubject(3), rec.Subject)
	require.Equal(t, b.ID(), rec.Header.Get(jetstream.MsgIDHeader))
	want := dedupKeyOf("acme", "m1")
	other := dedupKeyOf("other", "m1")
	require.Equal(t, string(want[:])+string(other[:]), string(rec.Data), "client ids only")

	// After the PubAck a copy in the next batch goes.
	require.Equal(t, []string{"acme/m2"}, dedupIDs(dedupTake(l, 3, []event.Event{dedupEvent("acme", "m1", false), dedupEvent("acme", "m2", false)})))
	require.Equal(t, 3.0, testutil.ToFloat64(m.dropped.WithLabelValues("3")))
}

// recordFailJS fails every publish to DEDUP.
type recordFailJS struct{ *fakeJS }

func (f recordFailJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if strings.HasPrefix(msg.Subject, "dedup.") {
		return nil, fmt.Errorf("nats: timeout")
	}
	return f.fakeJS.PublishMsg(ctx, msg, opts...)
}

func TestRecordFailureOnlyForgets(t *testing.T) {
	l, js, m := dedupLoop(t)
	l.js = recordFailJS{js}
	dedupTake(l, 1, []event.Event{dedupEvent("acme", "m1", false)})
	l.cut(t.Context(), batch.CutAge)
	require.Len(t, js.published, 1, "the batch only")
	require.Equal(t, 1.0, testutil.ToFloat64(m.recordFailures.WithLabelValues("3")))
	// This tenure remembers the id from the PubAck...
	require.Empty(t, dedupTake(l, 2, []event.Event{dedupEvent("acme", "m1", false)}))
	// ...the next one, rebuilt from DEDUP without the record, lets the copy
	// through: a duplicate, never a loss.
	next, _, _ := dedupLoop(t)
	next.rebuildDedup(t.Context())
	require.Len(t, dedupTake(next, 3, []event.Event{dedupEvent("acme", "m1", false)}), 1)
}

func TestHeldBatchIsNotSeen(t *testing.T) {
	l, js, _ := dedupLoop(t)
	owned := true
	l.holds = func() bool { return owned }
	dedupTake(l, 1, []event.Event{dedupEvent("acme", "m1", false)})
	owned = false // the lease is lost: the batch is held, not published
	l.cut(t.Context(), batch.CutRows)
	require.NotNil(t, l.held)
	require.Empty(t, js.published)
	// A copy in the next batch passes: its original is not published.
	require.Len(t, dedupTake(l, 2, []event.Event{dedupEvent("acme", "m1", false)}), 1)
}

// TestDedupSurvivesRestartAndWipe runs batchers one after the other over
// one NATS: the second drops copies of what the first published (its set
// rebuilt from DEDUP), and once DEDUP is wiped a third stores the copies
// again: duplicates, never a loss.
func TestDedupSurvivesRestartAndWipe(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: 50 * time.Millisecond})
	ctx := t.Context()

	publish := func(ids ...string) {
		t.Helper()
		events := make([]event.Event, len(ids))
		for i, id := range ids {
			events[i] = dedupEvent("acme", id, false)
		}
		_, err := js.PublishMsg(ctx, &nats.Msg{Subject: streams.EventsSubject(0), Data: event.AppendEncoded(nil, events), Header: nats.Header{}})
		require.NoError(t, err)
	}
	// rows are the rows of the batches since the last call, which then
	// consumes them as the sink would.
	rows := func() []string {
		var out []string
		for _, b := range readBatches(t, js, 0) {
			out = append(out, b.b.EventID...)
		}
		st, err := js.Stream(ctx, streams.Batches)
		require.NoError(t, err)
		require.NoError(t, st.Purge(ctx))
		return out
	}
	run := func(wantRows int) {
		t.Helper()
		b := start(t, cfg, nil)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Equal(c, wantRows, counter(b.m.rows, 0))
			assert.Zero(c, testutil.ToFloat64(b.m.pending.WithLabelValues("0")))
		}, 10*time.Second, 10*time.Millisecond)
		b.stop()
	}

	publish("a", "b", "a")
	publish("c", "b")
	run(3)
	require.Equal(t, []string{"a", "b", "c"}, rows())

	publish("c", "a", "d") // resent reordered, in a superset
	run(1)
	require.Equal(t, []string{"d"}, rows())

	st, err := js.Stream(ctx, streams.Dedup)
	require.NoError(t, err)
	require.NoError(t, st.Purge(ctx))
	publish("a", "e")
	run(2)
	require.Equal(t, []string{"a", "e"}, rows(), "the wiped state lets the copy through")
}

// BenchmarkSeenSet measures the memory of a shard's set per id (bytes/id)
// and the time of a lookup of a new id plus its add.
func BenchmarkSeenSet(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			now := time.Now()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			s := newSeenSet(24*time.Hour, 2*n) // room for the timed adds
			var buf []byte
			var k dedupKey
			for i := range n {
				k, buf = keyOf(buf, "acme", fmt.Sprintf("message-%012d", i))
				s.check(k)
				if i%10_000 == 9_999 {
					s.commit(s.cut(), now)
				}
			}
			s.commit(s.cut(), now)
			runtime.GC()
			runtime.ReadMemStats(&after)
			perID := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				k, buf = keyOf(buf, "acme", fmt.Sprintf("fresh-%012d", i))
				s.check(k)
				if i%10_000 == 9_999 {
					s.commit(s.cut(), now)
				}
			}
			b.ReportMetric(perID, "bytes/id") // after the loop: ResetTimer clears metrics
			runtime.KeepAlive(s)
		})
	}
}

// BenchmarkDedupDisk measures the DEDUP stream's bytes per id: 1,000,000
// ids in records of 5,000 (a batch of 5,000 rows with client ids each).
func BenchmarkDedupDisk(b *testing.B) {
	ns := natstest.Start(b)
	js := natstest.JetStream(b, ns.ClientURL())
	ctx := b.Context()
	cfg := DefaultDedupConfig()
	st, err := js.CreateOrUpdateStream(ctx, streams.DedupDefinition(streams.DefaultConfig(), cfg.Window, cfg.maxBytes(8)))
	require.NoError(b, err)
	const ids, perRecord = 1_000_000, 5_000
	for b.Loop() {
		require.NoError(b, st.Purge(ctx))
		var buf []byte
		for r := range ids / perRecord {
			data := make([]byte, 0, perRecord*streams.DedupKeySize)
			for i := range perRecord {
				var k dedupKey
				k, buf = keyOf(buf, "acme", fmt.Sprintf("message-%d-%d", r, i))
				data = append(data, k[:]...)
			}
			_, err := js.PublishMsg(ctx, streams.DedupMsg(0, fmt.Sprintf("0:%d-%d", r*10, r*10+9), data))
			require.NoError(b, err)
		}
	}
	info, err := st.Info(ctx)
	require.NoError(b, err)
	b.ReportMetric(float64(info.State.Bytes)/ids, "disk-bytes/id")

	// The shard loop's start-up read of those records.
	bcfg := DefaultConfig()
	l := &shardLoop{cfg: &bcfg, js: js, k: 0, log: zap.NewNop(),
		dedup: newDedup(cfg, st, newDedupMetrics(prometheus.NewRegistry()), "0")}
	start := time.Now()
	l.rebuildDedup(ctx)
	require.Equal(b, ids, l.dedup.seen.len())
	b.ReportMetric(time.Since(start).Seconds(), "rebuild-s/1M-ids")
}

// BenchmarkDedupPerEvent is the shard loop's cost of dedup per event with
// a client id (ns/op is per event): key, lookups, the open batch, and
// remembering the batch's keys at its PubAck, with 1,000,000 ids already
// held. The DEDUP record's publish (one per batch) is left out.
func BenchmarkDedupPerEvent(b *testing.B) {
	cfg := DefaultDedupConfig()
	cfg.MaxIDsPerShard = 4_000_000 // no eviction: all ids share one bucket here
	d := newDedup(cfg, &fakeStream{}, newDedupMetrics(prometheus.NewRegistry()), "0")
	now := time.Now()
	var buf []byte
	var k dedupKey
	for i := range 1_000_000 {
		k, buf = keyOf(buf, "acme", fmt.Sprintf("held-%d", i))
		d.seen.check(k)
	}
	d.seen.commit(d.seen.cut(), now)
	const perMsg, perBatch = 500, 10_000
	msgs := make([][]event.Event, 64)
	for m := range msgs {
		msgs[m] = make([]event.Event, perMsg)
		for i := range msgs[m] {
			msgs[m][i] = dedupEvent("acme", fmt.Sprintf("%016x-%d", m, i), false)
		}
	}
	events := make([]event.Event, perMsg)
	n := 0
	for b.Loop() {
		if n%perMsg == 0 {
			b.StopTimer()
			m := msgs[(n/perMsg)%len(msgs)]
			copy(events, m)
			for i := range events { // a fresh id for every event
				events[i].EventID = fmt.Sprintf("%s-%d", m[i].EventID, n)
			}
			b.StartTimer()
			d.dropDuplicates(events, now)
		}
		n++
		if n%perBatch == 0 {
			d.seen.commit(d.cutKeys().gen, now)
		}
	}
}

func TestDedupConfig(t *testing.T) {
	cfg := DefaultConfig()
	require.NoError(t, config.ApplyEnv(&cfg, func(k string) (string, bool) {
		v, ok := map[string]string{"SURGE_DEDUP_WINDOW": "1h", "SURGE_DEDUP_MAX_IDS_PER_SHARD": "5000"}[k]
		return v, ok
	}))
	require.Equal(t, DedupConfig{Enabled: true, Window: time.Hour, MaxIDsPerShard: 5000}, cfg.Dedup)
	cfg.Dedup = DedupConfig{Enabled: true, Window: time.Millisecond}
	err := cfg.Validate()
	require.ErrorContains(t, err, "dedup: window must be at least 1s, got 1ms")
	require.ErrorContains(t, err, "dedup: max_ids_per_shard must be at least 1, got 0")
	cfg.Dedup.Enabled = false
	require.NoError(t, cfg.Validate(), "off: nothing else is checked")
}

// publishIDs writes one EVENTS message of shard 0 with events of acme
// with those client ids.
func publishIDs(t *testing.T, js jetstream.JetStream, ids ...string) {
	t.Helper()
	events := make([]event.Event, len(ids))
	for i, id := range ids {
		events[i] = dedupEvent("acme", id, false)
	}
	_, err := js.PublishMsg(t.Context(), &nats.Msg{Subject: streams.EventsSubject(0), Data: event.AppendEncoded(nil, events), Header: nats.Header{}})
	require.NoError(t, err)
}

// TestDedupFollowsTheLease: two leased batchers, the shard's holder
// publishes events and stops; the other takes the lease, reads the
// shard's records and drops the copies that come next.
func TestDedupFollowsTheLease(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: 50 * time.Millisecond})
	cfg.Mode = shard.ModeLease
	cfg.LeaseTTL = 2 * time.Second
	cfg.Retry = fastRetry
	batchers := []running{start(t, cfg, nil), start(t, cfg, nil)}
	rows := func() int { return counter(batchers[0].m.rows, 0) + counter(batchers[1].m.rows, 0) }

	publishIDs(t, js, "a", "b")
	require.EventuallyWithT(t, func(c *assert.CollectT) { assert.Equal(c, 2, rows()) }, 10*time.Second, 10*time.Millisecond)
	holder := 0
	if counter(batchers[1].m.batches, 0) > 0 {
		holder = 1
	}
	other := batchers[1-holder]
	batchers[holder].stop()
	assertLeaseOwners(t, js, 1, map[string][]int{other.instance: {0}})

	publishIDs(t, js, "b", "c", "a")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 3, rows())
		assert.Equal(c, 2.0, testutil.ToFloat64(other.dedupMetrics.dropped.WithLabelValues("0")))
	}, 10*time.Second, 10*time.Millisecond)
}
