package batcher

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// TestProjectionProblemsAreRecorded: a value that conflicts with its typed
// column and a key past the keys an event may have are the tenant's
// problems, counted exactly: one aggregate per (tenant, reason, path) of a
// batch, the sample naming the first event.
func TestProjectionProblemsAreRecorded(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL(), 1, batch.DefaultPolicy())
	cfg.Schema.MaxKeysPerEvent = 2
	s, err := New(cfg, service.Deps{
		Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	ty, err := newTyper(t.Context(), js, cfg.Schema, 1, 5*time.Second, cfg.Retry, s.typedMetrics, s.host.Problems, zaptest.NewLogger(t))
	require.NoError(t, err)
	l := &shardLoop{cfg: &s.cfg, k: 0, typer: ty, holds: func() bool { return true }}
	var ids []string
	cut := func(properties string) *batch.Batch {
		_, rows := newMessage(0, 2) // two events of tenant acme
		for i := range rows {
			rows[i].Properties = properties
		}
		ids = append(ids, rows[0].EventID)
		builder := batch.NewBuilder(0, batch.DefaultPolicy())
		builder.Add(1, rows, time.Now())
		b := builder.Cut()
		l.project(t.Context(), b)
		return b
	}

	cut(`{"n":1}`) // n becomes an Int64 column
	b := cut(`{"n":"x","a":1,"b":2}`)
	require.Equal(t, []string{`{"/n":"x"}`, `{"/n":"x"}`}, b.Conflicts)
	require.Equal(t, [][]string{{"/b"}, {"/b"}}, b.Unpromoted)
	cut(`{"n":"y"}`)

	_, err = s.host.Problems.Flush(t.Context(), js)
	require.NoError(t, err)
	aggs, _, err := problems.Read(t.Context(), js, problems.Query{Tenant: "acme", Since: time.Now().Add(-time.Hour)})
	require.NoError(t, err)
	got := map[string]int64{}
	for _, a := range aggs {
		require.Equal(t, "batcher", a.Service)
		got[a.Reason+" "+a.Field] += a.Count
		switch a.Reason {
		case problems.ReasonTypeConflict:
			require.Len(t, a.Samples, 2, "one sample per batch")
			require.Equal(t, ids[1], a.Samples[0].ID)
			require.Equal(t, ids[2], a.Samples[1].ID)
			require.Contains(t, a.Samples[0].Detail, "_conflicts")
		case problems.ReasonUnpromotedKey:
			require.Equal(t, []problems.Sample{{ID: ids[1], Detail: "past the first 2 keys of an event (schema.max_keys_per_event)"}}, a.Samples)
		}
	}
	require.Equal(t, map[string]int64{
		problems.ReasonTypeConflict + " /n":  4,
		problems.ReasonUnpromotedKey + " /b": 2,
	}, got)
}
