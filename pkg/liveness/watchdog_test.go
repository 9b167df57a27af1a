package liveness

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// readiness is a /readyz in memory: the failing checks and their reasons.
type readiness map[string]string

func (r readiness) Ready(check string)            { delete(r, check) }
func (r readiness) NotReady(check, reason string) { r[check] = reason }

// NotReadyReasons lists the failing checks as "check: reason", sorted, as
// the admin server's /readyz does.
func (r readiness) NotReadyReasons() []string {
	out := []string{}
	for check, reason := range r {
		out = append(out, check+": "+reason)
	}
	slices.Sort(out)
	return out
}

func TestWatchdog(t *testing.T) {
	reg := prometheus.NewRegistry()
	admin := readiness{}
	now := time.Unix(1000, 0)
	ws := newWatchdogs("sink", 10*time.Second, admin, zaptest.NewLogger(t), reg, func() time.Time { return now })
	w := ws.For("3")
	stalls := func() float64 { return testutil.ToFloat64(ws.stalls.WithLabelValues("3")) }

	// Idle time is no stall.
	now = now.Add(time.Minute)
	require.False(t, w.Check(0))
	require.Empty(t, admin.NotReadyReasons())

	// Backlog, but progress within the timeout.
	now = now.Add(9 * time.Second)
	require.False(t, w.Check(5))
	w.Progress()

	// Backlog and no progress for the timeout: stalled, once.
	w.Waiting("fetch from BATCHES")
	now = now.Add(10 * time.Second)
	require.True(t, w.Check(70))
	require.Equal(t, 1.0, stalls())
	require.Equal(t, []string{"stalled shard 3: 70 pending, no progress for 10s, waiting on fetch from BATCHES"}, admin.NotReadyReasons())
	require.True(t, w.Repair(), "the owner repairs a stall")
	require.False(t, w.Repair(), "once")
	now = now.Add(5 * time.Second)
	require.True(t, w.Check(70), "still stalled")
	require.Equal(t, 1.0, stalls(), "one stall counted once")
	require.Equal(t, []string{"stalled shard 3: 70 pending, no progress for 15s, waiting on fetch from BATCHES"}, admin.NotReadyReasons())

	// Progress ends it.
	w.Progress()
	require.False(t, w.Stalled())
	require.Empty(t, admin.NotReadyReasons())

	// A second stall counts again; a drained backlog ends it too.
	now = now.Add(11 * time.Second)
	require.True(t, w.Check(1))
	require.Equal(t, 2.0, stalls())
	require.False(t, w.Check(0))
	require.Empty(t, admin.NotReadyReasons())
	require.False(t, w.Repair(), "a stall that ended needs no repair")
}

func TestWatchdogInputUnit(t *testing.T) {
	reg := prometheus.NewRegistry()
	admin := readiness{}
	now := time.Unix(0, 0)
	ws := newWatchdogs("partitioner", time.Second, admin, zaptest.NewLogger(t), reg, func() time.Time { return now })
	w := ws.For("input")
	now = now.Add(2 * time.Second)
	require.True(t, w.Check(3))
	require.Equal(t, []string{"stalled input: 3 pending, no progress for 2s, waiting on start"}, admin.NotReadyReasons())
	require.Equal(t, 1.0, testutil.ToFloat64(ws.stalls.WithLabelValues("input")))
}

func TestWatchdogSeriesStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	admin := readiness{}
	ws := newWatchdogs("batcher", time.Second, admin, zaptest.NewLogger(t), reg, time.Now)
	ws.For("0")
	ws.For("1")
	require.Equal(t, 2, testutil.CollectAndCount(ws.stalls, "surge_batcher_stalls_total"))
}
