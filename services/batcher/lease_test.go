package batcher

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// leaseOwners reads which instance holds each batcher shard's lease; a shard
// without one is missing.
func leaseOwners(ctx context.Context, js jetstream.JetStream, shards int) (map[string][]int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return lease.Holders(ctx, js, "batcher", shards)
}

func assertLeaseOwners(t *testing.T, js jetstream.JetStream, shards int, want map[string][]int) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err := leaseOwners(t.Context(), js, shards)
		if assert.NoError(c, err) {
			assert.Equal(c, want, got)
		}
	}, 15*time.Second, 20*time.Millisecond)
}

// TestLeasedBatchersShareShardsExactlyOnce runs two batchers in lease mode
// on one EVENTS under load and stops one: the shards spread over both,
// the stopped one's move to the other and go on, and every event is
// batched exactly once, in contiguous ranges.
func TestLeasedBatchersShareShardsExactlyOnce(t *testing.T) {
	const shards, rows = 4, 10
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), shards, batch.Policy{MaxRows: 50, MaxBytes: 1 << 20, MaxAge: 100 * time.Millisecond})
	cfg.Mode = shard.ModeLease
	cfg.LeaseTTL = 2 * time.Second
	cfg.Retry = fastRetry
	a := start(t, cfg, nil)
	b := start(t, cfg, nil)
	spread := lease.Assign(shards, []string{a.instance, b.instance})
	assertLeaseOwners(t, js, shards, spread)

	type result struct {
		sent []published
		err  error
	}
	stop := make(chan struct{})
	done := make([]chan result, shards)
	for k := range shards {
		done[k] = make(chan result, 1)
		go func() {
			sent, err := load(t.Context(), stop, js, k, rows)
			done[k] <- result{sent, err}
		}()
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, k := range spread[a.instance] {
			assert.GreaterOrEqual(c, counter(a.m.batches, k), 3, "shard %d", k)
		}
		for _, k := range spread[b.instance] {
			assert.GreaterOrEqual(c, counter(b.m.batches, k), 3, "shard %d", k)
		}
	}, 10*time.Second, 10*time.Millisecond)
	for _, k := range spread[a.instance] {
		require.Zero(t, counter(b.m.batches, k), "shard %d is a's", k)
	}

	// Stop a under load: b takes its shards and goes on batching them.
	stopped := time.Now()
	a.stop()
	assertLeaseOwners(t, js, shards, map[string][]int{b.instance: {0, 1, 2, 3}})
	t.Logf("the stopped batcher's shards moved in %s", time.Since(stopped))
	for k := range shards {
		before := counter(b.m.batches, k)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Greater(c, counter(b.m.batches, k), before, "shard %d", k)
		}, 10*time.Second, 10*time.Millisecond)
	}

	close(stop)
	sent := make([][]published, shards)
	for k := range shards {
		select {
		case res := <-done[k]:
			require.NoError(t, res.err)
			sent[k] = res.sent
		case <-time.After(10 * time.Second):
			t.Fatal("load did not stop")
		}
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for k := range shards {
			assert.Equal(c, rows*len(sent[k]), counter(a.m.rows, k)+counter(b.m.rows, k), "shard %d", k)
		}
	}, 10*time.Second, 10*time.Millisecond)
	b.stop()
	for k := range shards {
		requireCoverage(t, k, readBatches(t, js, k), sent[k])
		require.Equal(t, uint64(0), subjectMsgs(t, js, streams.EventsSubject(k)))
		t.Logf("shard %d: %d messages, batches by a %d, by b %d", k, len(sent[k]), counter(a.m.batches, k), counter(b.m.batches, k))
	}
	leases, err := leaseOwners(t.Context(), js, shards)
	require.NoError(t, err)
	require.Empty(t, leases, "a stopped batcher releases its leases")
}

// TestPublishChecksTheLeaseFirst checks the fence of the publish path: a
// shard whose lease no longer holds publishes nothing, and says why.
func TestPublishChecksTheLeaseFirst(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	// A batcher that never runs: the test drives one shard loop by hand.
	s, err := New(testConfig(ns.ClientURL(), 1, batch.DefaultPolicy()), service.Deps{
		Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	events, err := js.Stream(t.Context(), streams.Events)
	require.NoError(t, err)
	mine := false
	l := &shardLoop{
		cfg: &s.cfg, tracer: s.host.Tracer, k: 0, js: js, events: events, subject: streams.EventsSubject(0), out: streams.BatchesSubject(0),
		m: s.m.forShard(0), log: zaptest.NewLogger(t), wd: s.watchdogs.For("0"),
		holds: func() bool { return mine },
	}
	builder := batch.NewBuilder(0, batch.DefaultPolicy())
	msg, rows := newMessage(0, 3)
	ack, err := js.PublishMsg(t.Context(), msg)
	require.NoError(t, err)
	builder.Add(ack.Sequence, rows, time.Now())
	c := &cutBatch{b: builder.Cut(), reason: batch.CutShutdown}

	require.ErrorIs(t, l.publish(t.Context(), c), shard.ErrNotOwner)
	require.Empty(t, readBatches(t, js, 0))
	require.Zero(t, counter(s.m.batches, 0))
	require.Equal(t, uint64(1), subjectMsgs(t, js, streams.EventsSubject(0)), "EVENTS keeps the events")

	mine = true
	require.NoError(t, l.publish(t.Context(), c))
	require.Len(t, readBatches(t, js, 0), 1)
	require.Equal(t, 1, counter(s.m.batches, 0))
}

// TestBatchCutWithoutTheLeaseIsProjected: a batch cut while the shard's
// lease looked lost is still projected on the agreed schema (it may be
// published once the lease is renewed), and its new keys, which it may not
// propose, are listed in _unpromoted rather than dropped from the typed side.
func TestBatchCutWithoutTheLeaseIsProjected(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.DefaultPolicy())
	s, err := New(cfg, service.Deps{
		Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	ty, err := newTyper(t.Context(), js, cfg.Schema, 1, 5*time.Second, cfg.Retry, s.typedMetrics, s.host.Problems, zaptest.NewLogger(t))
	require.NoError(t, err)
	mine := true
	l := &shardLoop{cfg: &s.cfg, k: 0, typer: ty, holds: func() bool { return mine }}
	cut := func(properties string) *batch.Batch {
		_, rows := newMessage(0, 2)
		for i := range rows {
			rows[i].Properties = properties
		}
		builder := batch.NewBuilder(0, batch.DefaultPolicy())
		builder.Add(1, rows, time.Now())
		b := builder.Cut()
		l.project(t.Context(), b)
		return b
	}

	held := cut(`{"plan":"pro"}`)
	require.Len(t, held.Typed, 1, "the shard's owner proposes plan")
	require.Equal(t, "p_plan", held.Typed[0].Name)

	mine = false
	b := cut(`{"plan":"free","seats":3}`)
	require.True(t, b.Projected())
	require.Len(t, b.Typed, 1, "plan is agreed; seats is not and is not proposed")
	require.Equal(t, "p_plan", b.Typed[0].Name)
	require.Equal(t, []string{"free", "free"}, b.Typed[0].Strs)
	require.Equal(t, [][]string{{"/seats"}, {"/seats"}}, b.Unpromoted)
	require.Len(t, ty.reg.Current().Doc.Columns, 1, "nothing proposed without the lease")
}
