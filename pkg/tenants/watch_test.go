package tenants_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/tenants"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestWatcherAppliesChangesWithoutARestart(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	st, err := tenants.Open(ctx, js, 1)
	require.NoError(t, err)
	require.NoError(t, st.Set(ctx, "a", tenants.Limits{EventsPerSecond: 2000, Burst: 4000}))

	base := tenants.Limits{EventsPerSecond: 100}
	w := tenants.NewWatcher(js, 1, base, zaptest.NewLogger(t))
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(wctx) }()
	defer func() { stop(); <-done }()
	select {
	case <-w.Ready():
	case <-ctx.Done():
		t.Fatal("the watcher never read the bucket")
	}
	require.Equal(t, tenants.Limits{EventsPerSecond: 2000, Burst: 4000}, w.Limits("a"))
	require.Equal(t, base, w.Limits("b"), "the configured default")

	require.NoError(t, st.Set(ctx, "", tenants.Limits{EventsPerSecond: 50}))
	require.NoError(t, st.Set(ctx, "a", tenants.Limits{EventsPerSecond: 10}))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, tenants.Limits{EventsPerSecond: 10}, w.Limits("a"))
		assert.Equal(c, tenants.Limits{EventsPerSecond: 50}, w.Limits("b"))
	}, 10*time.Second, 5*time.Millisecond)

	require.NoError(t, st.Unset(ctx, "a"))
	require.NoError(t, st.Unset(ctx, ""))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, base, w.Limits("a"), "back to the default, which is the configuration's again")
	}, 10*time.Second, 5*time.Millisecond)

	require.NoError(t, st.Set(ctx, "z", tenants.Limits{BytesPerSecond: 1 << 20}))
	got, err := st.List(ctx)
	require.NoError(t, err)
	require.Equal(t, []tenants.Entry{{Tenant: "z", Limits: tenants.Limits{BytesPerSecond: 1 << 20}}}, got)

	require.ErrorContains(t, st.Set(ctx, "a.b", tenants.Limits{}), "must be 1 to 64 letters")
	require.ErrorContains(t, st.Set(ctx, "a", tenants.Limits{Burst: 3}), "burst needs events_per_second")
}
