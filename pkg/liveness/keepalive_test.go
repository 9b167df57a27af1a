package liveness

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingMsg counts InProgress calls; nothing else of it is used.
type countingMsg struct {
	jetstream.Msg
	inProgress atomic.Int32
}

func (m *countingMsg) InProgress() error { m.inProgress.Add(1); return nil }

func TestKeepaliveSendsInProgressUntilStop(t *testing.T) {
	k := Keepalive{Every: time.Millisecond}
	k.Stop() // without Hold: nothing to do
	a, b := &countingMsg{}, &countingMsg{}
	k.Hold(a)
	k.Hold(b)
	require.Equal(t, 2, k.Held())
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.GreaterOrEqual(c, a.inProgress.Load(), int32(3))
		assert.GreaterOrEqual(c, b.inProgress.Load(), int32(3))
	}, 10*time.Second, time.Millisecond)
	k.Stop()
	require.Zero(t, k.Held())
	stopped := a.inProgress.Load()
	// Stop waited for the goroutine: no call can follow it. A new Hold
	// starts a new goroutine for the new message only.
	c := &countingMsg{}
	k.Hold(c)
	assert.EventuallyWithT(t, func(col *assert.CollectT) {
		assert.GreaterOrEqual(col, c.inProgress.Load(), int32(2))
	}, 10*time.Second, time.Millisecond)
	k.Stop()
	require.Equal(t, stopped, a.inProgress.Load(), "a stopped message is not kept alive any more")
}
