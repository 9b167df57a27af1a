package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// TestProblemsCommand prints every tenant's problems, or one tenant's.
func TestProblemsCommand(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	last := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	rec, err := problems.NewRecorder("ingest", prometheus.NewRegistry(), problems.WithClock(func() time.Time { return last }))
	require.NoError(t, err)
	for _, id := range []string{"m1", "m2"} {
		rec.Add("acme", problems.ReasonMissingField, "event", problems.Sample{ID: id, Detail: "required"})
	}
	rec.AddN("globex", problems.ReasonTypeConflict, "/amount", 5, problems.Sample{ID: "e9"})
	rec.Add("nobody!", problems.ReasonUnauthorized, "", problems.Sample{Detail: "POST /v1/batch"})
	_, err = rec.Flush(t.Context(), js)
	require.NoError(t, err)

	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		require.NoError(t, runProblems(t.Context(), append([]string{"--nats", ns.ClientURL(), "--dir", t.TempDir()}, args...), &out))
		return out.String()
	}
	require.Equal(t, strings.Join([]string{
		"TENANT    REASON         COUNT  FIELDS       LAST                  SAMPLES",
		"_unknown  unauthorized   1      - (1)        2026-05-01T12:00:00Z  POST /v1/batch",
		"acme      missing_field  2      event (2)    2026-05-01T12:00:00Z  m1: required; m2: required",
		"globex    type_conflict  5      /amount (5)  2026-05-01T12:00:00Z  e9",
		"",
	}, "\n"), run())
	require.Equal(t, strings.Join([]string{
		"TENANT  REASON         COUNT  FIELDS     LAST                  SAMPLES",
		"acme    missing_field  2      event (2)  2026-05-01T12:00:00Z  m1: required; m2: required",
		"",
	}, "\n"), run("--tenant", "acme", "--since", "1h"))
	require.Equal(t, "no problems\n", run("--tenant", "initech"))
	require.Contains(t, run("--limit", "1"), "truncated: read the first 1 aggregates")

	var out bytes.Buffer
	require.EqualError(t, runProblems(t.Context(), []string{"--nats", ns.ClientURL(), "--since", "yesterday"}, &out),
		"--since must be an RFC 3339 time or a positive duration such as 1h")
}
