package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/tools/stack"
)

func TestProgressLine(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 15, 4, 5, 0, time.Local)
	t1 := t0.Add(2 * time.Second)
	idle := sample{at: t0}

	require.Empty(t, progressLine(idle, sample{at: t1}), "nothing moved, nothing waits")

	// After a restart this process inserts what an earlier run accepted:
	// inserted passes accepted, and the line shows the backlog, not a
	// negative difference.
	restart := sample{at: t1, accepted: 0, inserted: 40_000, backlog: stack.Backlog{Ingest: 2, Events: 1500, Batches: 3}}
	line := progressLine(idle, restart)
	require.Equal(t, "15:04:07  accepted          0 (       0/s)   inserted      40000 (   20000/s)   backlog: ingest 2, events 1500, batches 3", line)
	require.NotContains(t, line, "-")

	// A stuck pipeline keeps printing while work waits, though no count moves.
	stuck := restart
	stuck.at = t1.Add(2 * time.Second)
	require.Equal(t, "15:04:09  accepted          0 (       0/s)   inserted      40000 (       0/s)   backlog: ingest 2, events 1500, batches 3", progressLine(restart, stuck))

	// Drained: one last line with the empty backlog, then silence.
	drained := sample{at: stuck.at.Add(2 * time.Second), inserted: 41_000}
	require.Equal(t, "15:04:11  accepted          0 (       0/s)   inserted      41000 (     500/s)   backlog: ingest 0, events 0, batches 0", progressLine(stuck, drained))
	later := drained
	later.at = drained.at.Add(2 * time.Second)
	require.Empty(t, progressLine(drained, later))

	// Rates never go negative, nor divide by a zero interval.
	require.NotContains(t, progressLine(sample{at: t1, accepted: 10}, sample{at: t1, accepted: 5}), "-")

	broken := sample{at: later.at.Add(2 * time.Second), inserted: 41_000, backlogErr: errors.New("jetstream state: down")}
	require.True(t, strings.HasSuffix(progressLine(later, broken), "backlog: unknown (jetstream state: down)"))
}
