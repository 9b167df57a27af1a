package chaos

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/chaudit"
)

// installAudit adds the audit of inserts (chaudit) to every ClickHouse
// server at servers (HTTP addresses; every replica of a replicated
// cluster) once the sink has made its schema, before the load sends an
// event: a plain MergeTree copy of each block inserted into
// surge.events_local, which no merge folds.
func installAudit(t *testing.T, servers []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	require.NoError(t, chaudit.Install(ctx, servers, "surge"))
}

// checkInsertedOnce asserts exactly once from the audit on every server at
// servers (HTTP addresses; every replica, each block being copied on the
// one replica that took it): each accepted event inserted once, no other
// event inserted. events_local alone cannot show it: a merge of the
// ReplacingMergeTree may fold a doubled insert before it is read.
//
// killed says a ClickHouse server was SIGKILLed in the run. A server
// writes a block to events_local before its view copies it, so a kill in
// between leaves rows the audit lacks; then the audit asserts at most once
// (nothing twice, nothing unwanted) and checkExactlyOnce, run before,
// asserts from the table that every accepted event arrived: a merge only
// removes rows, so it cannot fake an arrival.
func checkInsertedOnce(t *testing.T, servers []string, accepted map[string]struct{}, killed bool) {
	t.Helper()
	inserted, err := chaudit.Inserted(servers, "surge", "")
	require.NoError(t, err)
	r := chaudit.Compare(inserted, accepted)
	if !killed {
		require.NoError(t, r.Err())
		return
	}
	require.NoError(t, r.AtMostOnce())
	if len(r.Never) > 0 {
		t.Logf("audit: %d accepted events in events_local without an audit copy (a ClickHouse SIGKILL between the table's write and the view's)", len(r.Never))
	}
}
