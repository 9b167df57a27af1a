package lease_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestPresenceCountsTheLiveInstances(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	log := zaptest.NewLogger(t)

	run := func(p *lease.Presence) func() {
		pctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- p.Run(pctx) }()
		return func() { stop(); require.NoError(t, <-done) }
	}
	a := lease.NewPresence(js, "ingest", "a", lease.MinTTL, 1, log)
	b := lease.NewPresence(js, "ingest", "b", lease.MinTTL, 1, log)
	other := lease.NewPresence(js, "sink", "c", lease.MinTTL, 1, log)
	require.Equal(t, 1, a.Live(), "alone until counted")
	stopA, stopB, stopOther := run(a), run(b), run(other)
	defer stopOther()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 2, a.Live())
		assert.Equal(c, 2, b.Live())
		assert.Equal(c, 1, other.Live(), "another service's members do not count")
	}, 10*time.Second, 10*time.Millisecond)

	stopB() // deletes its key: a counts itself alone at its next round
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 1, a.Live())
	}, 10*time.Second, 10*time.Millisecond)
	stopA()
}
