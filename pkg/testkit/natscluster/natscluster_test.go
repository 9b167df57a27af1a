package natscluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/natscluster"
)

// TestCluster starts three nodes, loses the leader of an R3 stream to a
// SIGKILL and to a SIGTERM, restarts it on its ports and store, and checks
// that the stream keeps every acked message once and that the harness
// reports the leaders as they change.
func TestCluster(t *testing.T) {
	c := natscluster.Start(t, 3)
	require.Len(t, strings.Split(c.URLs(), ","), 3)

	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := t.Context()
	// Healthy nodes may not all be placement peers of the meta leader yet
	// ("no suitable peers for placement, peer offline"): the services
	// retry the creation of their streams, and so does the test.
	require.EventuallyWithT(t, func(co *assert.CollectT) {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name: "T", Subjects: []string{"t.>"}, Replicas: 3, Storage: jetstream.FileStorage, Duplicates: time.Minute,
		})
		assert.NoError(co, err)
	}, 10*time.Second, 50*time.Millisecond, "create an R3 stream")

	sent := 0
	// publish stores message sent+1 with its id, retrying through an
	// election, and returns how long it took.
	publish := func() time.Duration {
		t.Helper()
		sent++
		id := fmt.Sprintf("m%d", sent)
		start := time.Now()
		for {
			pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err := js.Publish(pctx, "t.x", []byte(id), jetstream.WithMsgID(id))
			cancel()
			if err == nil {
				return time.Since(start)
			}
			require.Less(t, time.Since(start), 20*time.Second, "publish %s: %v", id, err)
		}
	}
	for range 10 {
		publish()
	}

	for _, fault := range []struct {
		name string
		do   func(int) error
	}{{"SIGKILL", c.Kill}, {"SIGTERM", c.Stop}} {
		leader, err := c.StreamLeader("T")
		require.NoError(t, err)
		require.NotZero(t, c.PID(leader))
		start := time.Now()
		require.NoError(t, fault.do(leader))
		assert.Zero(t, c.PID(leader))
		gap := publish()
		next, err := c.WaitStreamLeader("T", leader, 20*time.Second)
		require.NoError(t, err)
		t.Logf("%s of leader %s: %s leads after %s, first publish after %s", fault.name, c.Name(leader), c.Name(next), time.Since(start), gap)
		for range 10 {
			publish()
		}
		require.NoError(t, c.Restart(leader))
		assert.NotZero(t, c.PID(leader))
	}

	// Every acked message once, and a resent id is a duplicate.
	ack, err := js.Publish(ctx, "t.x", []byte("m1"), jetstream.WithMsgID("m1"))
	require.NoError(t, err)
	assert.True(t, ack.Duplicate)
	s, err := js.Stream(ctx, "T")
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(sent), info.State.Msgs)
	assert.Len(t, info.Cluster.Replicas, 2)
}

// TestMissingBinary: a binary that is not there is an error that names
// the install command.
func TestMissingBinary(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	t.Setenv("HOME", t.TempDir())
	t.Setenv(natscluster.EnvBinary, "")
	_, err := natscluster.Binary()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "go install github.com/nats-io/nats-server/v2@"+natscluster.Version)
}

// TestLaunchWithLogins: a cluster launched with logins (3 nodes, the
// default) refuses a client without one, lets each user in with its own,
// keeps a user with permissions to its subjects, and its own connection
// logs in as the first user.
func TestLaunchWithLogins(t *testing.T) {
	dir := t.TempDir()
	c, err := natscluster.Launch(t.Context(), natscluster.Options{
		Dir: dir, Name: "logins", NodePrefix: "node-",
		Users: []natscluster.User{
			{Name: "svc", Password: "svc-pw"},
			{Name: "producer", Password: "producer-pw", Publish: []string{"in.demo.>"}, Subscribe: []string{"_INBOX_demo.>"}},
		},
	})
	require.NoError(t, err)
	t.Cleanup(c.Shutdown)
	assert.Equal(t, "node-0", c.Name(0))
	assert.FileExists(t, filepath.Join(dir, "node-0", "nats.conf"))

	_, err = nats.Connect(c.URL(0))
	require.ErrorIs(t, err, nats.ErrAuthorization)

	js, err := c.JetStream()
	require.NoError(t, err)
	_, err = js.AccountInfo(t.Context())
	require.NoError(t, err, "the cluster's own connection logs in as the first user")

	denied := make(chan error, 1)
	nc, err := nats.Connect(c.URL(0), nats.UserInfo("producer", "producer-pw"), nats.CustomInboxPrefix("_INBOX_demo"),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case denied <- err:
			default:
			}
		}))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	require.NoError(t, nc.Publish("in.demo.x", []byte("ok")))
	require.NoError(t, nc.Flush())
	require.NoError(t, nc.Publish("elsewhere", []byte("no")))
	require.NoError(t, nc.Flush())
	select {
	case err := <-denied:
		require.ErrorIs(t, err, nats.ErrPermissionViolation)
	case <-time.After(5 * time.Second):
		t.Fatal("a publish outside the user's subjects was not refused")
	}
}
