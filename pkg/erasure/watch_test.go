package erasure

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// TestWatcherFollowsTheBucket: a suppression written before the watcher
// starts is in its first read, one written after applies within the
// watch, and Drop removes exactly the suppressed events.
func TestWatcherFollowsTheBucket(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	ctx := t.Context()
	st, err := Open(ctx, js, 1)
	require.NoError(t, err)
	_, err = st.Submit(ctx, Submission{Tenant: "acme", Users: []string{"a", "a", "b"}}, time.Now())
	require.NoError(t, err)

	w := NewWatcher(js, 1, zap.NewNop())
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(wctx) }()
	t.Cleanup(func() { stop(); <-done })
	require.NoError(t, w.Wait(ctx))
	require.Equal(t, 2, w.Len())

	cut := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r, err := st.Submit(ctx, Submission{Tenant: "acme", Users: []string{"c"}, Before: cut}, time.Now())
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		id, ok := w.Suppressed("acme", "c", cut.Add(-time.Second))
		assert.True(c, ok)
		assert.Equal(c, r.ID, id)
	}, 5*time.Second, 5*time.Millisecond)

	events := []event.Event{
		{Tenant: "acme", UserID: "a", TS: cut},
		{Tenant: "acme", UserID: "keep", TS: cut},
		{Tenant: "other", UserID: "a", TS: cut},
		{Tenant: "acme", UserID: "c", TS: cut.Add(-time.Hour)},
		{Tenant: "acme", UserID: "c", TS: cut.Add(time.Hour)},
	}
	kept, n := w.Drop(events)
	require.Equal(t, 2, n)
	var left []string
	for _, e := range kept {
		left = append(left, e.Tenant+"/"+e.UserID)
	}
	require.Equal(t, []string{"acme/keep", "other/a", "acme/c"}, left)

	// A whole-user request widens the cut; a narrower one keeps it.
	_, err = st.Submit(ctx, Submission{Tenant: "acme", Users: []string{"c"}}, time.Now())
	require.NoError(t, err)
	_, err = st.Submit(ctx, Submission{Tenant: "acme", Users: []string{"c"}, Before: cut}, time.Now())
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		_, ok := w.Suppressed("acme", "c", cut.Add(time.Hour))
		assert.True(c, ok)
	}, 5*time.Second, 5*time.Millisecond)

	reqs, err := st.List(ctx)
	require.NoError(t, err)
	require.Len(t, reqs, 4)
	require.Equal(t, 2, reqs[0].UserCount, "ids deduplicated")
}
