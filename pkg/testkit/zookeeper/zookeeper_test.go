package zookeeper_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/surge-events/surge/pkg/testkit/zookeeper"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStartStopRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	require.NoError(t, zookeeper.EnsureInstalled(ctx, t.Logf))
	zk, err := zookeeper.Start(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = zk.Stop() })

	require.NoError(t, zookeeper.Ruok(zk.Addr()))
	require.NoError(t, zookeeper.Serving(zk.Addr()))
	require.NotZero(t, zk.PID())
	require.NoError(t, zk.Start(ctx), "start of a running server is a no-op")

	require.NoError(t, zk.Stop())
	require.Zero(t, zk.PID())
	require.Error(t, zookeeper.Ruok(zk.Addr()), "a stopped server does not answer")
	require.NoError(t, zk.Stop(), "stop is idempotent")

	require.NoError(t, zk.Start(ctx), "restart on the same port and data")
	require.NoError(t, zookeeper.Serving(zk.Addr()))
}
