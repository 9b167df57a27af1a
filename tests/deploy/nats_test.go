package deploy

import (
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/natsserver"
)

// TestNATSClusterConfig reads deployments/nats/cluster.conf with
// nats-server's own parser and checks it against the code: the services'
// login, the demo producer's permissions (the same the embedded server
// grants), and the MQTT listener.
func TestNATSClusterConfig(t *testing.T) {
	t.Setenv("SERVER_NAME", "nats-0")
	t.Setenv("SURGE_SERVICE_PASSWORD", "svc-secret")
	t.Setenv("SURGE_DEMO_PASSWORD", "demo-secret")
	opts, err := server.ProcessConfigFile(filepath.Join(root, "deployments", "nats", "cluster.conf"))
	require.NoError(t, err)

	require.Equal(t, "nats-0", opts.ServerName, "MQTT needs a server name")
	require.True(t, opts.JetStream, "MQTT needs JetStream")
	require.Equal(t, 1883, opts.MQTT.Port)

	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	require.Len(t, users, 2)
	require.Equal(t, "svc-secret", users["surge"].Password)
	require.Nil(t, users["surge"].Permissions, "the services may do anything")
	require.Equal(t, "demo-secret", users["demo"].Password)
	want := natsserver.ProducerPermissions("demo")
	got := users["demo"].Permissions
	require.Equal(t, want.Publish.Allow, got.Publish.Allow)
	require.Equal(t, want.Subscribe.Allow, got.Subscribe.Allow)
	require.Empty(t, got.Publish.Deny)
	require.Empty(t, got.Subscribe.Deny)

	c := loadCompose(t)
	for _, svc := range []string{"ingest", "partitioner", "batcher", "sink"} {
		env := c.Services[svc].Environment
		require.Equal(t, "surge", env["SURGE_NATS_USER"], svc)
		require.Equal(t, "${SURGE_SERVICE_PASSWORD:-surge-local}", env["SURGE_NATS_PASSWORD"], svc)
	}
	require.Contains(t, c.Services["nats-0"].Ports, "1883:1883")
	for _, n := range []string{"nats-0", "nats-1", "nats-2"} {
		env := c.Services[n].Environment
		require.Equal(t, n, env["SERVER_NAME"])
		require.NotEmpty(t, env["SURGE_SERVICE_PASSWORD"], n)
		require.NotEmpty(t, env["SURGE_DEMO_PASSWORD"], n)
	}
}
