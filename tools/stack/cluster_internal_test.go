package stack

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestClusterInstanceEnv: an instance's environment is the common one,
// then its service's, then ClusterOptions.ServiceEnv of its service, which
// overrides both; an ingest gets its HTTP address and URL.
func TestClusterInstanceEnv(t *testing.T) {
	dir := t.TempDir()
	c := &Cluster{
		opts: ClusterOptions{Dir: dir, ServiceEnv: map[string]map[string]string{
			"sink": {"SURGE_LOG_LEVEL": "debug", "SURGE_LEASE_TTL": "5s"},
		}},
		common:     map[string]string{"SURGE_LOG_LEVEL": "warn", "SURGE_NATS_URL": "nats://a,nats://b"},
		perService: map[string]map[string]string{"sink": {"SURGE_LEASE_TTL": "10s", "SURGE_SHARDS": "8"}, "ingest": {}},
	}
	sink := c.newInstance("sink", 2, "127.0.0.1:1001", "")
	require.Equal(t, "sink-2", sink.Name)
	require.Equal(t, filepath.Join(dir, "logs", "sink-2.log"), sink.LogPath)
	require.Empty(t, sink.IngestURL)
	require.Equal(t, map[string]string{
		"SURGE_ADMIN_ADDR":  "127.0.0.1:1001",
		"OTEL_SERVICE_NAME": "surge-sink",
		"SURGE_LOG_LEVEL":   "debug",
		"SURGE_NATS_URL":    "nats://a,nats://b",
		"SURGE_LEASE_TTL":   "5s",
		"SURGE_SHARDS":      "8",
	}, sink.env)

	ingest := c.newInstance("ingest", 0, "127.0.0.1:1002", "127.0.0.1:1003")
	require.Equal(t, "http://127.0.0.1:1003", ingest.IngestURL)
	require.Equal(t, "127.0.0.1:1003", ingest.env["SURGE_HTTP_ADDR"])
	require.Equal(t, "warn", ingest.env["SURGE_LOG_LEVEL"])
}

// TestClusterFaultArguments: the fault methods refuse what the cluster
// does not have, before touching any process.
func TestClusterFaultArguments(t *testing.T) {
	c := &Cluster{perService: map[string]map[string]string{"ingest": {}, "sink": {}}}
	require.ErrorContains(t, c.KillInstance("sink-9"), "no instance sink-9")
	require.ErrorContains(t, c.StopInstance("sink-9"), "no instance sink-9")
	require.ErrorContains(t, c.RestartInstance(t.Context(), "sink-9"), "no instance sink-9")
	_, err := c.AddInstance(t.Context(), "ingest")
	require.ErrorContains(t, err, `cannot add an instance of "ingest"`)
	_, err = c.AddInstance(t.Context(), "nope")
	require.ErrorContains(t, err, `cannot add an instance of "nope"`)
	require.ErrorContains(t, c.KillNATS(3), "no NATS node 3")
	require.ErrorContains(t, c.RestartNATS(t.Context(), -1), "no NATS node -1")
}
