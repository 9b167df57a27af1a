package sink_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

// TestPresenceFindsAMessageCutDifferently: the batcher's dedup may cut a
// message differently after a restart. Here message 5 landed without the
// event f2 (dropped then as a copy of f, stored by message 2) and comes
// again with f2 first (the batcher's state was lost): it is present, by
// its other row, so its rows are not inserted twice.
func TestPresenceFindsAMessageCutDifferently(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, _ := singleServerStore(ctx, t)

	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	ev := func(id string) event.Event {
		return event.Event{EventID: id, Tenant: "acme", UserID: "u", Type: "track", TS: at, ReceivedAt: at, Properties: "{}"}
	}
	landed := &batch.Batch{Shard: 0}
	landed.Append(2, []event.Event{ev("f")})
	landed.Append(5, []event.Event{ev("g")}) // f2 was dropped
	require.NoError(t, st.Insert(ctx, landed))

	again := &batch.Batch{Shard: 0}
	again.Append(5, []event.Event{ev("f2"), ev("g")})
	again.Append(6, []event.Event{ev("h")})
	present, err := st.Present(ctx, 0, again)
	require.NoError(t, err)
	require.Equal(t, map[uint64]struct{}{5: {}}, present)
	rest := again.Without(present)
	require.Equal(t, []string{"h"}, rest.EventID)
}
