package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/chaudit"
	"github.com/surge-events/surge/tools/stack"
)

// The exactly-once checks read the audit of inserts (chaudit): a plain
// MergeTree copy of every block inserted into events_local, which no
// merge folds. events_local is a ReplacingMergeTree, so a merge may fold
// a doubled insert before a count of the table reads it.

// chHTTP is the HTTP address of every ClickHouse server of st.
func chHTTP(st *stack.Stack) []string {
	var out []string
	for _, srv := range st.ClickHouse.Servers {
		out = append(out, srv.HTTPAddr())
	}
	return out
}

// installAudit adds the audit to every server at servers (HTTP addresses;
// every replica of a replicated cluster) once the sink has made its
// schema; a test calls it before it sends its first event.
func installAudit(t *testing.T, servers []string, database string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	require.NoError(t, chaudit.Install(ctx, servers, database))
}

// requireInsertedOnce asserts from the audit that each event of want was
// inserted exactly once and no other event of tenant ("" for all) was.
func requireInsertedOnce[V any](t *testing.T, servers []string, database, tenant string, want map[string]V) {
	t.Helper()
	inserted, err := chaudit.Inserted(servers, database, tenant)
	require.NoError(t, err)
	require.NoError(t, chaudit.Compare(inserted, want).Err(), "tenant %q", tenant)
}

// requireEachInsertedOnce asserts from the audit that n events were
// inserted, each exactly once, and returns their ids, for tests whose
// events get their ids from ingest.
func requireEachInsertedOnce(t *testing.T, servers []string, database string, n int) map[string]int {
	t.Helper()
	inserted, err := chaudit.Inserted(servers, database, "")
	require.NoError(t, err)
	require.NoError(t, chaudit.Compare(inserted, inserted).AtMostOnce())
	require.Len(t, inserted, n)
	return inserted
}
