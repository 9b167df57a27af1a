package sink_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/services/sink"
)

// TestReconcilerRepairsAndAdopts: a column agreed in the schema but never
// created (its proposer died between the compare-and-swap and the ALTER)
// appears on every server's local and Distributed tables without any
// batch naming it; a type an operator then sets by hand on every server
// is adopted into the schema, so batchers fill it as it is.
func TestReconcilerRepairsAndAdopts(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	reg, err := schema.OpenRegistry(ctx, e.js, "events", 1, 5*time.Second)
	require.NoError(t, err)
	added := time.Now().UTC().Add(-time.Hour)
	_, err = reg.Update(ctx, func(d *schema.Doc) (*schema.Doc, bool) {
		next := d.Clone()
		next.Columns["p_lost"] = &schema.Col{Path: "/lost", Type: "int64", Origin: schema.Inferred, Added: added}
		return next, true
	})
	require.NoError(t, err)

	e.startSinkWith(e.config(2), func(s *sink.Service) { s.ReconcileEvery(100 * time.Millisecond) })
	for i := range e.conns {
		for _, table := range []string{"events_local", "events"} {
			q := fmt.Sprintf("SELECT count() FROM system.columns WHERE database = 'surge' AND table = '%s' AND name = 'p_lost' AND type = 'Nullable(Int64)'", table)
			require.Eventually(t, func() bool { n, err := e.tryCount(i, q); return err == nil && n == 1 },
				20*time.Second, 20*time.Millisecond, "server %d %s lacks p_lost", i, table)
		}
	}

	// A sink that died between the local ALTER and the Distributed one
	// left events without the column: it is added again.
	require.NoError(t, e.conns[1].Exec(ctx, "ALTER TABLE surge.events DROP COLUMN p_lost"))
	dist := "SELECT count() FROM system.columns WHERE database = 'surge' AND table = 'events' AND name = 'p_lost'"
	require.Eventually(t, func() bool { n, err := e.tryCount(1, dist); return err == nil && n == 1 },
		20*time.Second, 20*time.Millisecond, "server 1's events lacks p_lost")

	for i, c := range e.conns {
		require.NoError(t, c.Exec(ctx, "ALTER TABLE surge.events_local MODIFY COLUMN p_lost Nullable(String)"), "server %d", i)
	}
	require.Eventually(t, func() bool {
		s, err := reg.Read(ctx)
		if err != nil {
			return false
		}
		c := s.Doc.Columns["p_lost"]
		return c.Type == "string" && c.CHType == "Nullable(String)" && c.Origin == schema.Adopted
	}, 20*time.Second, 20*time.Millisecond, "p_lost not adopted as a string column")
}
