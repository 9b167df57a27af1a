package deploy

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/natsserver"
)

const natsConfTarget = "/etc/nats/cluster.conf"

// natsServerModule is the nats-server version a go.mod requires.
var natsServerModule = regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\S+)`)

// TestComposeNATSVersion checks compose runs the nats-server release the
// tests run: the one linked into this test (tests/go.mod), which is also
// the embedded server of pkg/testkit/natsserver (pkg/go.mod).
func TestComposeNATSVersion(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "pkg", "go.mod"))
	require.NoError(t, err)
	m := natsServerModule.FindSubmatch(data)
	require.NotNil(t, m, "pkg/go.mod requires nats-server")
	require.Equal(t, server.VERSION, string(m[1]), "the embedded server of the tests and of pkg")

	p := loadProject(t, nil)
	for _, n := range natsNodes {
		require.Equal(t, "nats:"+server.VERSION+"-alpine", svc(t, p, n).Image, "%s runs the nats-server the tests run", n)
	}
}

// TestNATSClusterConfig reads deployments/nats/cluster.conf with
// nats-server's own parser, as each node of the compose cluster would with
// its environment, and checks it against compose and the code: the
// services' login, the demo producer's permissions (the same the embedded
// server grants), the MQTT listener, the routes, and the ports the health
// check and the services use.
func TestNATSClusterConfig(t *testing.T) {
	p := loadProject(t, map[string]string{"SURGE_SERVICE_PASSWORD": "svc-secret", "SURGE_DEMO_PASSWORD": "demo-secret"})
	for _, n := range natsNodes {
		t.Run(n, func(t *testing.T) {
			s := svc(t, p, n)
			require.Equal(t, []string{"-c", natsConfTarget}, []string(s.Command))
			conf := bindSource(t, s, natsConfTarget)
			env := envOf(s)
			for k, v := range env {
				t.Setenv(k, v)
			}
			opts, err := server.ProcessConfigFile(conf)
			require.NoError(t, err)

			require.Equal(t, n, opts.ServerName, "MQTT and JetStream clustering need a unique server name")
			require.True(t, opts.JetStream, "MQTT needs JetStream")
			require.Equal(t, "/data/jetstream", opts.StoreDir)
			requireVolumeAt(t, s, "/data")
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

			// Every node routes to every node (itself included, which
			// nats-server skips), by service name on the cluster port.
			var routes []string
			for _, r := range opts.Routes {
				host, port, err := net.SplitHostPort(r.Host)
				require.NoError(t, err)
				require.Equal(t, strconv.Itoa(opts.Cluster.Port), port)
				routes = append(routes, host)
			}
			require.Equal(t, natsNodes, routes)

			require.Equal(t, []string{"CMD", "wget", "-q", "-O", "/dev/null",
				"http://localhost:" + strconv.Itoa(opts.HTTPPort) + "/healthz?js-enabled-only=true"}, []string(s.HealthCheck.Test))

			// The services log in as surge with the nodes' password and reach
			// every node on its client port.
			var urls []string
			for _, node := range natsNodes {
				urls = append(urls, "nats://"+node+":"+strconv.Itoa(opts.Port))
			}
			for _, name := range surgeServices {
				c := common(t, surgeConfig(t, p, name))
				require.Equal(t, urls, splitComma(c.NATS.URL), "%s connects to every node", name)
				require.Equal(t, "surge", c.NATS.User, name)
				require.Equal(t, users["surge"].Password, c.NATS.Password, name)
				require.Equal(t, len(natsNodes), c.Streams.Replicas, "%s: streams at R%d on %d nodes", name, len(natsNodes), len(natsNodes))
			}
		})
	}
	ports := map[string]bool{}
	for _, port := range svc(t, p, "nats-0").Ports {
		ports[port.Published] = true
	}
	require.Equal(t, map[string]bool{"4222": true, "1883": true}, ports, "nats-0 takes producers over NATS and MQTT")
}

// requireVolumeAt checks s keeps target on a named volume of its own.
func requireVolumeAt(t *testing.T, s types.ServiceConfig, target string) {
	t.Helper()
	i := slices.IndexFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == target })
	require.GreaterOrEqual(t, i, 0, "%s keeps no volume at %s", s.Name, target)
	require.Equal(t, types.VolumeTypeVolume, s.Volumes[i].Type, "%s: %s", s.Name, target)
	require.Equal(t, s.Name, s.Volumes[i].Source, "%s's data volume is named after it", s.Name)
}
