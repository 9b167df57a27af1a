package partitioner

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
)

// TestRouteGroupsEventsByShardInOrder: route, without NATS, puts each
// event in its shard's group (shard.Of its tenant and user), in the order
// the request had them, and a second message reuses the groups empty.
func TestRouteGroupsEventsByShardInOrder(t *testing.T) {
	cfg := testConfig("nats://127.0.0.1:1")
	cfg.Shards = 4
	s, err := New(cfg, service.Deps{Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.host.Close() })
	w := &worker{s: s, groups: make([][]event.Event, cfg.Shards)}

	var events []event.Event
	want := make([][]string, cfg.Shards)
	for i, u := range []string{"u1", "u2", "u3", "u1", "u9", "u2", "u4"} {
		e := event.Event{EventID: "e" + string(rune('a'+i)), Tenant: "acme", UserID: u}
		events = append(events, e)
		k := shard.Of("acme", u, cfg.Shards)
		want[k] = append(want[k], e.EventID)
	}
	w.route(events)
	got := make([][]string, cfg.Shards)
	for k, g := range w.groups {
		for _, e := range g {
			got[k] = append(got[k], e.EventID)
		}
	}
	require.Equal(t, want, got)

	w.route(events[:1])
	total := 0
	for _, g := range w.groups {
		total += len(g)
	}
	require.Equal(t, 1, total, "the groups of the last message are emptied")
}
