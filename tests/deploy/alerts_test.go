package deploy

import (
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/stretchr/testify/require"
)

// alertsFile holds the alert rules the compose Prometheus loads.
const alertsFile = "deployments/prometheus/alerts.yml"

// loadRules parses the rules file with Prometheus' own rule parser, as the
// server does at start (unknown fields, bad PromQL and bad templates are
// errors), and returns every rule of every group.
func loadRules(t *testing.T) []rulefmt.Rule {
	t.Helper()
	groups, errs := rulefmt.ParseFile(filepath.Join(root, alertsFile), false, model.UTF8Validation, promqlParser, slog.New(slog.DiscardHandler))
	require.Empty(t, errs, "%s does not load", alertsFile)
	require.NotEmpty(t, groups.Groups)
	var out []rulefmt.Rule
	for _, g := range groups.Groups {
		require.NotEmpty(t, g.Rules, "group %s", g.Name)
		out = append(out, g.Rules...)
	}
	return out
}

// The alerts, each documented in the alert table of docs/observability.md
// (TestDocsAlerts).
var alertNames = []string{
	"SurgeBacklogGrowing",
	"SurgeDeadLetters",
	"SurgeIngestOverloaded",
	"SurgeIngestServerErrors",
	"SurgeIngestUnavailable",
	"SurgeNoBatchesWhileWorkPending",
	"SurgeNoInsertsWhileWorkPending",
	"SurgeNoRoutingWhileWorkPending",
	"SurgeServiceDown",
	"SurgeServiceMissing",
	"SurgeServiceNotReady",
	"SurgeStalled",
	"SurgeStreamFull",
	"SurgeStreamNearFull",
	"SurgeTenantOverQuota",
}

// TestAlertRules checks every rule is an alert an operator can act on: a
// severity, a summary, a description and a runbook, and a wait no longer
// than the 10 minutes the runbooks speak of.
func TestAlertRules(t *testing.T) {
	names := map[string]bool{}
	for _, r := range loadRules(t) {
		require.NotEmpty(t, r.Alert, "a recording rule %q: the file holds alerts only", r.Record)
		names[r.Alert] = true
		require.Contains(t, []string{"critical", "warning"}, r.Labels["severity"], "%s: severity", r.Alert)
		require.ElementsMatch(t, []string{"summary", "description", "runbook"}, slices.Collect(maps.Keys(r.Annotations)), r.Alert)
		for k, v := range r.Annotations {
			require.GreaterOrEqual(t, len(strings.Fields(v)), 5, "%s: %s says too little: %q", r.Alert, k, v)
		}
		require.LessOrEqual(t, time.Duration(r.For), 10*time.Minute, r.Alert)
		require.True(t, strings.HasPrefix(r.Alert, "Surge"), r.Alert)
	}
	require.Equal(t, alertNames, slices.Sorted(maps.Keys(names)))
}

// ruleExpr returns the expression of the one rule of alert whose
// expression mentions metric.
func ruleExpr(t *testing.T, rules []rulefmt.Rule, alert, metric string) string {
	t.Helper()
	var found []string
	for _, r := range rules {
		if r.Alert == alert && strings.Contains(r.Expr, metric) {
			found = append(found, r.Expr)
		}
	}
	require.Len(t, found, 1, "rules of %s reading %s", alert, metric)
	return found[0]
}

// TestAlertsFire evaluates each alert's expression with Prometheus' query
// engine over series made up for the case (one sample a minute from time
// 0, in promqltest's notation), and checks which series it fires for.
func TestAlertsFire(t *testing.T) {
	rules := loadRules(t)
	cases := []struct {
		name          string
		alert, metric string // the rule: its alert and a metric its expression reads
		load          string
		at            time.Duration
		want          []string // the label sets it fires for, without the metric name
	}{
		{
			name: "sink shard 0 inserts nothing while batches wait", alert: "SurgeNoInsertsWhileWorkPending", metric: "surge_sink_consumer_pending",
			load: `
surge_sink_consumer_pending{job="sink",instance="a",shard="0"} 5x20
surge_sink_consumer_ack_pending{job="sink",instance="a",shard="0"} 1x20
surge_sink_batches_total{job="sink",instance="a",shard="0",outcome="inserted"} 10x20
surge_sink_consumer_pending{job="sink",instance="a",shard="1"} 5x20
surge_sink_consumer_ack_pending{job="sink",instance="a",shard="1"} 0x20
surge_sink_batches_total{job="sink",instance="a",shard="1",outcome="inserted"} 0+1x20
surge_sink_consumer_pending{job="sink",instance="a",shard="2"} 0x20
surge_sink_consumer_ack_pending{job="sink",instance="a",shard="2"} 0x20
surge_sink_batches_total{job="sink",instance="a",shard="2",outcome="inserted"} 3x20`,
			at: 15 * time.Minute, want: []string{`{shard="0"}`},
		},
		{
			name: "a shard moved to another sink by lease is not stuck", alert: "SurgeNoInsertsWhileWorkPending", metric: "surge_sink_consumer_pending",
			load: `
surge_sink_consumer_pending{job="sink",instance="a",shard="0"} 5x5 0x15
surge_sink_consumer_ack_pending{job="sink",instance="a",shard="0"} 0x20
surge_sink_batches_total{job="sink",instance="a",shard="0",outcome="inserted"} 10x20
surge_sink_consumer_pending{job="sink",instance="b",shard="0"} _x5 5x15
surge_sink_consumer_ack_pending{job="sink",instance="b",shard="0"} _x5 0x15
surge_sink_batches_total{job="sink",instance="b",shard="0",outcome="inserted"} _x5 0+1x15`,
			at: 15 * time.Minute,
		},
		{
			name: "no sink handles the batches BATCHES holds", alert: "SurgeNoInsertsWhileWorkPending", metric: "surge_stream_messages",
			load: `
surge_stream_messages{job="ingest",instance="a",stream="BATCHES"} 7x20
surge_stream_messages{job="ingest",instance="a",stream="EVENTS"} 500x20
surge_sink_batches_total{job="sink",instance="b",shard="0",outcome="inserted"} 10x20`,
			at: 15 * time.Minute, want: []string{`{}`},
		},
		{
			name: "a sink inserting while batches wait", alert: "SurgeNoInsertsWhileWorkPending", metric: "surge_stream_messages",
			load: `
surge_stream_messages{job="ingest",instance="a",stream="BATCHES"} 7x20
surge_sink_batches_total{job="sink",instance="b",shard="0",outcome="duplicate"} 0+1x20`,
			at: 15 * time.Minute,
		},
		{
			name: "batcher shard 3 publishes nothing while events wait", alert: "SurgeNoBatchesWhileWorkPending", metric: "surge_batcher",
			load: `
surge_batcher_consumer_pending{job="batcher",instance="a",shard="3"} 40x20
surge_batcher_batches_total{job="batcher",instance="a",shard="3"} 7x20
surge_batcher_consumer_pending{job="batcher",instance="a",shard="4"} 40x20
surge_batcher_batches_total{job="batcher",instance="a",shard="4"} 0+2x20`,
			at: 15 * time.Minute, want: []string{`{shard="3"}`},
		},
		{
			name: "partitioner routes nothing while requests wait", alert: "SurgeNoRoutingWhileWorkPending", metric: "surge_partitioner",
			load: `
surge_partitioner_consumer_pending{job="partitioner",instance="a"} 12x20
surge_partitioner_consumer_ack_pending{job="partitioner",instance="a"} 0x20
surge_partitioner_messages_total{job="partitioner",instance="a",outcome="acked"} 100x20
surge_partitioner_messages_total{job="partitioner",instance="a",outcome="naked"} 0x20`,
			at: 15 * time.Minute, want: []string{`{}`},
		},
		{
			name: "partitioner naking counts as moving", alert: "SurgeNoRoutingWhileWorkPending", metric: "surge_partitioner",
			load: `
surge_partitioner_consumer_pending{job="partitioner",instance="a"} 12x20
surge_partitioner_consumer_ack_pending{job="partitioner",instance="a"} 0x20
surge_partitioner_messages_total{job="partitioner",instance="a",outcome="acked"} 100x20
surge_partitioner_messages_total{job="partitioner",instance="a",outcome="naked"} 0+3x20`,
			at: 15 * time.Minute,
		},
		{
			name: "BATCHES backlog grows past 20 only on shard 0", alert: "SurgeBacklogGrowing", metric: "surge_sink_consumer_pending",
			load: `
surge_sink_consumer_pending{job="sink",instance="a",shard="0"} 0+3x20
surge_sink_consumer_pending{job="sink",instance="a",shard="1"} 50x20
surge_sink_consumer_pending{job="sink",instance="a",shard="2"} 0+1x20`,
			at: 15 * time.Minute, want: []string{`{shard="0"}`},
		},
		{
			name: "EVENTS backlog grows past 1000", alert: "SurgeBacklogGrowing", metric: "surge_batcher_consumer_pending",
			load: `
surge_batcher_consumer_pending{job="batcher",instance="a",shard="5"} 0+100x20
surge_batcher_consumer_pending{job="batcher",instance="a",shard="6"} 5000-100x20`,
			at: 15 * time.Minute, want: []string{`{shard="5"}`},
		},
		{
			name: "INGEST backlog grows past 1000", alert: "SurgeBacklogGrowing", metric: "surge_partitioner_consumer_pending",
			load: `
surge_partitioner_consumer_pending{job="partitioner",instance="a"} 0+100x20`,
			at: 15 * time.Minute, want: []string{`{}`},
		},
		{
			name: "a sink stall in the last 10 minutes", alert: "SurgeStalled", metric: "surge_sink_stalls_total",
			load: `
surge_sink_stalls_total{job="sink",instance="a",shard="3"} 0x5 1x15
surge_sink_stalls_total{job="sink",instance="a",shard="4"} 0x20`,
			at: 8 * time.Minute, want: []string{`{instance="a", job="sink", shard="3"}`},
		},
		{
			name: "a sink stall over 10 minutes ago", alert: "SurgeStalled", metric: "surge_sink_stalls_total",
			load: `
surge_sink_stalls_total{job="sink",instance="a",shard="3"} 0x5 1x15`,
			at: 18 * time.Minute,
		},
		{
			name: "a batcher stall", alert: "SurgeStalled", metric: "surge_batcher_stalls_total",
			load: `
surge_batcher_stalls_total{job="batcher",instance="a",shard="1"} 0x5 1x15`,
			at: 8 * time.Minute, want: []string{`{instance="a", job="batcher", shard="1"}`},
		},
		{
			name: "a partitioner stall", alert: "SurgeStalled", metric: "surge_partitioner_stalls_total",
			load: `
surge_partitioner_stalls_total{job="partitioner",instance="a",shard="input"} 0x5 1x15`,
			at: 8 * time.Minute, want: []string{`{instance="a", job="partitioner", shard="input"}`},
		},
		{
			name: "sink dead letters", alert: "SurgeDeadLetters", metric: "surge_sink_dead_letters_total",
			load: `
surge_sink_dead_letters_total{job="sink",instance="a",shard="2"} 0x5 2x15
surge_sink_dead_letters_total{job="sink",instance="a",shard="7"} 0x20`,
			at: 8 * time.Minute, want: []string{`{shard="2"}`},
		},
		{
			name: "batcher dead letters", alert: "SurgeDeadLetters", metric: "surge_batcher_dead_letters_total",
			load: `
surge_batcher_dead_letters_total{job="batcher",instance="a",shard="1"} 0x5 1x15`,
			at: 8 * time.Minute, want: []string{`{shard="1"}`},
		},
		{
			name: "invalid producer events", alert: "SurgeDeadLetters", metric: "surge_partitioner_dead_letters_total",
			load: `
surge_partitioner_dead_letters_total{job="partitioner",instance="a"} 0x20
surge_partitioner_events_invalid_total{job="partitioner",instance="a"} 0x5 4x15`,
			at: 8 * time.Minute, want: []string{`{}`},
		},
		{
			name: "no dead letters for 10 minutes", alert: "SurgeDeadLetters", metric: "surge_partitioner_dead_letters_total",
			load: `
surge_partitioner_dead_letters_total{job="partitioner",instance="a"} 0x2 1x18
surge_partitioner_events_invalid_total{job="partitioner",instance="a"} 0x20`,
			at: 15 * time.Minute,
		},
		{
			name: "5% of requests answered 503", alert: "SurgeIngestUnavailable", metric: "surge_ingest_requests_total",
			load: `
surge_ingest_requests_total{job="ingest",instance="a",code="202"} 0+95x20
surge_ingest_requests_total{job="ingest",instance="a",code="503"} 0+5x20`,
			at: 15 * time.Minute, want: []string{`{}`},
		},
		{
			name: "0.5% of requests answered 503", alert: "SurgeIngestUnavailable", metric: "surge_ingest_requests_total",
			load: `
surge_ingest_requests_total{job="ingest",instance="a",code="202"} 0+995x20
surge_ingest_requests_total{job="ingest",instance="a",code="503"} 0+5x20`,
			at: 15 * time.Minute,
		},
		{
			name: "500s", alert: "SurgeIngestServerErrors", metric: "surge_ingest_requests_total",
			load: `
surge_ingest_requests_total{job="ingest",instance="a",code="202"} 0+100x20
surge_ingest_requests_total{job="ingest",instance="a",code="500"} 0+1x20`,
			at: 15 * time.Minute, want: []string{`{}`},
		},
		{
			name: "503s are not server errors", alert: "SurgeIngestServerErrors", metric: "surge_ingest_requests_total",
			load: `
surge_ingest_requests_total{job="ingest",instance="a",code="202"} 0+100x20
surge_ingest_requests_total{job="ingest",instance="a",code="503"} 0+100x20`,
			at: 15 * time.Minute,
		},
		{
			name: "10% of requests answered 429", alert: "SurgeIngestOverloaded", metric: "surge_ingest_requests_total",
			load: `
surge_ingest_requests_total{job="ingest",instance="a",code="202"} 0+90x20
surge_ingest_requests_total{job="ingest",instance="b",code="429"} 0+10x20
surge_ingest_requests_rejected_total{job="ingest",instance="b",reason="overloaded"} 0+10x20`,
			at: 15 * time.Minute, want: []string{`{}`},
		},
		{
			name: "10% of requests answered 429 for a tenant's quota", alert: "SurgeIngestOverloaded", metric: "surge_ingest_requests_total",
			load: `
surge_ingest_requests_total{job="ingest",instance="a",code="202"} 0+90x20
surge_ingest_requests_total{job="ingest",instance="b",code="429"} 0+10x20
surge_ingest_requests_rejected_total{job="ingest",instance="b",reason="over_quota"} 0+10x20`,
			at: 15 * time.Minute,
		},
		{
			name: "one tenant over its quota, seen by two instances", alert: "SurgeTenantOverQuota", metric: "surge_ingest_quota_refused_total",
			load: `
surge_ingest_quota_refused_total{job="ingest",instance="a",tenant="acme",reason="events"} 0+10x30
surge_ingest_quota_refused_total{job="ingest",instance="b",tenant="acme",reason="bytes"} 0+1x30
surge_ingest_quota_refused_total{job="ingest",instance="a",tenant="calm",reason="events"} 0x30`,
			at: 25 * time.Minute, want: []string{`{tenant="acme"}`},
		},
		{
			name: "BATCHES at 85% of its limit, seen by two services", alert: "SurgeStreamNearFull", metric: "surge_stream_bytes",
			load: `
surge_stream_bytes{job="sink",instance="a",stream="BATCHES"} 850x20
surge_stream_bytes{job="ingest",instance="b",stream="BATCHES"} 850x20
surge_stream_max_bytes{job="sink",instance="a",stream="BATCHES"} 1000x20
surge_stream_max_bytes{job="ingest",instance="b",stream="BATCHES"} 1000x20
surge_stream_bytes{job="sink",instance="a",stream="INGEST"} 100x20
surge_stream_max_bytes{job="sink",instance="a",stream="INGEST"} 1000x20`,
			at: 15 * time.Minute, want: []string{`{stream="BATCHES"}`},
		},
		{
			name: "BATCHES at 85% is not full", alert: "SurgeStreamFull", metric: "surge_stream_bytes",
			load: `
surge_stream_bytes{job="sink",instance="a",stream="BATCHES"} 850x20
surge_stream_max_bytes{job="sink",instance="a",stream="BATCHES"} 1000x20`,
			at: 15 * time.Minute,
		},
		{
			name: "EVENTS at 97%", alert: "SurgeStreamFull", metric: "surge_stream_bytes",
			load: `
surge_stream_bytes{job="batcher",instance="a",stream="EVENTS"} 970x20
surge_stream_max_bytes{job="batcher",instance="a",stream="EVENTS"} 1000x20`,
			at: 15 * time.Minute, want: []string{`{stream="EVENTS"}`},
		},
		{
			name: "a sink not ready", alert: "SurgeServiceNotReady", metric: "surge_sink_ready",
			load: `
surge_sink_ready{job="sink",instance="a"} 0x20
surge_sink_ready{job="sink",instance="b"} 1x20
surge_ingest_ready{job="ingest",instance="c"} 1x20
surge_partitioner_ready{job="partitioner",instance="d"} 1x20
surge_batcher_ready{job="batcher",instance="e"} 0x20`,
			at: 15 * time.Minute, want: []string{`{instance="a", job="sink"}`, `{instance="e", job="batcher"}`},
		},
		{
			name: "a sink not scraped", alert: "SurgeServiceDown", metric: "up",
			load: `
up{job="sink",instance="a"} 0x20
up{job="ingest",instance="b"} 1x20
up{job="grafana",instance="c"} 0x20`,
			at: 15 * time.Minute, want: []string{`{instance="a", job="sink"}`},
		},
		{
			name: "no sink at all", alert: "SurgeServiceMissing", metric: "absent(up",
			load: `
up{job="ingest",instance="a"} 1x20
up{job="partitioner",instance="b"} 1x20
up{job="batcher",instance="c"} 0x20
up{job="grafana",instance="d"} 1x20`,
			at: 15 * time.Minute, want: []string{`{job="sink"}`},
		},
		{
			name: "every service has an instance", alert: "SurgeServiceMissing", metric: "absent(up",
			load: `
up{job="ingest",instance="a"} 1x20
up{job="partitioner",instance="b"} 1x20
up{job="batcher",instance="c"} 0x20
up{job="sink",instance="d"} 1x20`,
			at: 15 * time.Minute, want: nil,
		},
	}
	engine := promqltest.NewTestEngine(t, false, 5*time.Minute, 1_000_000)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			expr := ruleExpr(t, rules, tc.alert, tc.metric)
			storage := promqltest.LoadedStorage(t, "load 1m"+tc.load)
			q, err := engine.NewInstantQuery(t.Context(), storage, nil, expr, time.Unix(0, 0).Add(tc.at))
			require.NoError(t, err)
			defer q.Close()
			res := q.Exec(t.Context())
			require.NoError(t, res.Err)
			vec, err := res.Vector()
			require.NoError(t, err)
			var got []string
			for _, s := range vec {
				got = append(got, s.Metric.DropMetricName().String())
			}
			require.ElementsMatch(t, tc.want, got, "%s at %s: %s", tc.alert, tc.at, expr)
		})
	}
}
