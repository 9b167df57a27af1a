package batcher

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// TestIdleSinkCutsEarly: with MinAge set, a shard whose sink has landed
// every batch cuts its open batch once it is MinAge old; while the sink
// has a batch in hand the next one grows, and it is cut when the sink's
// notice says that batch landed, not at MaxAge (an hour here).
func TestIdleSinkCutsEarly(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	nc := js.Conn()
	const minAge = 200 * time.Millisecond
	cfg := testConfig(ns.ClientURL(), 1, batch.Policy{MaxRows: 1000, MaxBytes: 1 << 20, MaxAge: time.Hour, MinAge: minAge})
	first := publishEvents(t, js, 0, 10, 10, nil)
	b := start(t, cfg, nil)

	// No batch published yet: the sink has nothing in hand.
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertPublishedAndTookAll(c, b.Service, 0, 1) }, 10*time.Second, 5*time.Millisecond)
	batches := readBatches(t, js, 0)
	require.Equal(t, []int{100}, requireCoverage(t, 0, batches, first))
	require.Equal(t, 1, cuts(b.Service, 0, batch.CutIdle))

	// The sink holds that batch: the next one waits, whatever its age.
	second := publishEvents(t, js, 0, 10, 10, nil)
	require.Never(t, func() bool { return counter(b.m.batches, 0) != 1 }, 5*minAge, minAge/10,
		"a batch was cut while the sink had one in hand")

	// A notice of an older batch changes nothing; the notice of the batch
	// in hand cuts the next one at once.
	require.NoError(t, nc.Publish(streams.LandedSubject(0), []byte(strconv.FormatUint(first[4].seq, 10))))
	require.NoError(t, nc.Flush())
	require.Never(t, func() bool { return counter(b.m.batches, 0) != 1 }, 5*minAge, minAge/10,
		"cut on a notice of an older batch")
	require.NoError(t, nc.Publish(streams.LandedSubject(0), []byte(strconv.FormatUint(first[len(first)-1].seq, 10))))
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertPublishedAndTookAll(c, b.Service, 0, 2) }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, []int{100, 100}, requireCoverage(t, 0, readBatches(t, js, 0), append(first, second...)))
	require.Equal(t, 2, cuts(b.Service, 0, batch.CutIdle))
	require.Zero(t, cuts(b.Service, 0, batch.CutAge))
	// The second batch was ripe before the sink was idle: it waited for
	// the sink, so the next ones linger twice as long.
	require.Equal(t, (2 * minAge).Seconds(), testutil.ToFloat64(b.m.linger.WithLabelValues("0")))

	// The sink lands the second batch and then waits for the third, which
	// is cut once it is 2 x minAge old (not at minAge): the sink waited
	// for it, so the linger halves back.
	require.NoError(t, nc.Publish(streams.LandedSubject(0), []byte(strconv.FormatUint(second[len(second)-1].seq, 10))))
	require.NoError(t, nc.Flush())
	third := publishEvents(t, js, 0, 10, 10, nil)
	require.EventuallyWithT(t, func(c *assert.CollectT) { assertPublishedAndTookAll(c, b.Service, 0, 3) }, 10*time.Second, 5*time.Millisecond)
	got := readBatches(t, js, 0)
	require.Equal(t, []int{100, 100, 100}, requireCoverage(t, 0, got, append(append(first, second...), third...)))
	require.Equal(t, minAge.Seconds(), testutil.ToFloat64(b.m.linger.WithLabelValues("0")))
	require.Equal(t, 3, cuts(b.Service, 0, batch.CutIdle))
}

// A notice that makes the sink idle ends the shard loop's wait, with
// errSinkIdle as its cause; one that leaves it busy does not.
func TestLandingNoticeWakesTheWait(t *testing.T) {
	var s sinkState
	s.publishedThrough(20)
	wait, cancel := s.waitUntil(context.Background(), time.Time{})
	defer cancel()
	s.landedThrough(10)
	require.NoError(t, wait.Err(), "the sink still has the batch up to 20")
	s.landedThrough(20)
	require.Error(t, wait.Err())
	require.True(t, errors.Is(context.Cause(wait), errSinkIdle))
	require.True(t, s.idle())

	// landed never goes back; a cancelled wait is not woken again.
	s.landedThrough(5)
	require.Equal(t, uint64(20), s.landed.Load())
	cancel()
	s.mu.Lock()
	require.Nil(t, s.wake)
	s.mu.Unlock()
}
