package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
	"github.com/surge-events/surge/tools/schemaview"
)

// TestSchemaCommand runs `surge schema` against a real ClickHouse server
// and NATS: it reads without creating the bucket, then lists the agreed
// column beside the one only ClickHouse holds, the conflicts and the
// unpromoted paths, as text and as JSON.
func TestSchemaCommand(t *testing.T) {
	ctx := t.Context()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	ch, err := chserver.StartCluster(ctx, t.TempDir(), 1)
	require.NoError(t, err)
	t.Cleanup(ch.Stop)
	srv := ch.Servers[0]
	for _, sql := range []string{
		"CREATE DATABASE demo",
		"CREATE TABLE demo.events_local (event_id String, tenant String, received_at DateTime('UTC'), shard UInt16, " +
			"_conflicts String, _unpromoted Array(String), p_plan Nullable(String), p_old Nullable(Int64)) ENGINE = MergeTree() ORDER BY event_id",
		"CREATE TABLE demo.events AS demo.events_local ENGINE = Distributed(" + ch.Name + ", demo, events_local, shard)",
		`INSERT INTO demo.events_local (event_id, tenant, received_at, _conflicts, _unpromoted, p_plan) VALUES
		 ('a', 'acme', now(), '{"/plan":7}', ['/x'], 'pro'), ('b', 'acme', now(), '', ['/x', '/y'], NULL)`,
	} {
		_, err := chserver.Query(srv.HTTPAddr(), sql)
		require.NoError(t, err)
	}
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())

	run := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := runSchema(ctx, append(args, "--nats", ns.ClientURL(), "--clickhouse", srv.Addr(), "--database", "demo", "--dir", t.TempDir()), &out, &errOut)
		return out.String() + errOut.String(), err
	}

	out, err := run("ls")
	require.NoError(t, err, out)
	assert.Regexp(t, `(?m)^p_old\s+-\s+-\s+Nullable\(Int64\)\s+NOT IN REGISTRY\s+-\s+-\s+0\.0% \(0/2\)$`, out)
	assert.Contains(t, out, "note: no bucket SURGE_SCHEMA: no batcher with typed columns has started\n")
	_, err = js.KeyValue(ctx, schema.Bucket)
	require.ErrorIs(t, err, jetstream.ErrBucketNotFound, "a look never creates the bucket")

	reg, err := schema.OpenRegistry(ctx, js, "clicks", 1, 5*time.Second)
	require.NoError(t, err)
	_, err = reg.Update(ctx, func(*schema.Doc) (*schema.Doc, bool) {
		return &schema.Doc{Columns: map[string]*schema.Col{
			"p_plan": {Path: "/plan", Type: "string", Origin: schema.Inferred, Tenant: "acme", Added: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
		}}, true
	})
	require.NoError(t, err)

	out, err = run("ls", "--table", "clicks", "--tenant", "acme")
	require.NoError(t, err, out)
	assert.True(t, strings.HasPrefix(out, "table clicks (revision 1), demo.events_local on 1 server; fill over tenant acme\n"), out)
	assert.Regexp(t, `(?m)^p_plan\s+/plan\s+string\s+Nullable\(String\)\s+inferred\s+acme\s+2026-12-01T00:00:00Z\s+50\.0% \(1/2\)$`, out)

	out, err = run("ls", "--json")
	require.NoError(t, err, out)
	var cols schemaview.Columns
	require.NoError(t, json.Unmarshal([]byte(out), &cols))
	assert.Equal(t, "events", cols.Table)
	assert.Equal(t, []string{"no schema table.events in SURGE_SCHEMA yet"}, cols.Notes)

	out, err = run("conflicts", "--table", "clicks", "--json", "--since", "10m")
	require.NoError(t, err, out)
	var conflicts schemaview.Conflicts
	require.NoError(t, json.Unmarshal([]byte(out), &conflicts))
	assert.Equal(t, []schemaview.ConflictPath{{Path: "/plan", Column: "p_plan", Type: "string", Rows: 1, Samples: []json.RawMessage{json.RawMessage("7")}}}, conflicts.Paths)
	assert.Equal(t, 1, conflicts.Sampled)
	assert.WithinDuration(t, time.Now().Add(-10*time.Minute), conflicts.Since, time.Minute)

	out, err = run("unpromoted", "--limit", "1")
	require.NoError(t, err, out)
	assert.Contains(t, out, ": 2 of 2 rows in events left paths out\n\nPATH  ROWS\n/x    2\n")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `unknown schema command "bogus"`},
		{[]string{"ls", "--since", "1h"}, "flag provided but not defined: -since"},
		{[]string{"conflicts", "--since", "0s"}, "--since must be positive"},
		{[]string{"unpromoted", "extra"}, `unexpected arguments ["extra"`},
	} {
		_, err := run(tc.args...)
		assert.ErrorContains(t, err, tc.want, "%v", tc.args)
	}
	var usage bytes.Buffer
	assert.EqualError(t, runSchema(ctx, nil, &usage, &usage), "give a command: ls, conflicts or unpromoted")
	assert.True(t, strings.HasPrefix(usage.String(), "Usage: surge schema"), usage.String())
}
