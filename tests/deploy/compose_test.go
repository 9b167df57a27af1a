// Package deploy checks the deployment files that cannot run here (no
// Docker daemon): their structure, references and agreement with the code.
package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

const root = "../.."

type composeFile struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build *struct {
			Context, Dockerfile string
			Args                map[string]string
		} `yaml:"build"`
		Ports       []string                  `yaml:"ports"`
		Volumes     []string                  `yaml:"volumes"`
		DependsOn   map[string]map[string]any `yaml:"depends_on"`
		Healthcheck *struct{ Test []string }  `yaml:"healthcheck"`
		Environment map[string]string         `yaml:"environment"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	require.NoError(t, err)
	var c composeFile
	require.NoError(t, yaml.Unmarshal(data, &c))
	return c
}

func TestComposeStack(t *testing.T) {
	c := loadCompose(t)
	for _, name := range []string{"nats-0", "nats-1", "nats-2", "clickhouse-0", "clickhouse-1", "jaeger", "prometheus",
		"ingest", "partitioner", "batcher", "sink"} {
		require.Contains(t, c.Services, name)
	}
	hostPorts := map[string]string{}
	for name, s := range c.Services {
		require.True(t, s.Image != "" || s.Build != nil, "%s has neither image nor build", name)
		if s.Build != nil {
			require.FileExists(t, filepath.Join(root, s.Build.Context, s.Build.Dockerfile), name)
			svc := s.Build.Args["SERVICE"]
			require.Equal(t, name, svc, "%s builds another service", name)
			require.FileExists(t, filepath.Join(root, "services", svc, "cmd", svc, "main.go"))
			require.NotNil(t, s.Healthcheck, "%s has no health check", name)
		}
		for dep, cond := range s.DependsOn {
			require.Contains(t, c.Services, dep, "%s depends on unknown %s", name, dep)
			if cond["condition"] == "service_healthy" {
				require.NotNil(t, c.Services[dep].Healthcheck, "%s waits for %s to be healthy, which has no health check", name, dep)
			}
		}
		for _, p := range s.Ports {
			host := strings.SplitN(p, ":", 2)[0]
			require.NotContains(t, hostPorts, host, "host port %s used by %s and %s", host, name, hostPorts[host])
			hostPorts[host] = name
		}
		for _, v := range s.Volumes {
			src := strings.SplitN(v, ":", 2)[0]
			if strings.HasPrefix(src, "./") {
				require.FileExists(t, filepath.Join(root, src), "%s mounts a missing file", name)
			} else {
				require.Contains(t, c.Volumes, src, "%s uses an undeclared volume", name)
			}
		}
	}
	require.Equal(t, "3", c.Services["sink"].Environment["SURGE_STREAMS_REPLICAS"], "streams at R3 in the cluster")
	require.Equal(t, "clickhouse-0:9000,clickhouse-1:9000", c.Services["sink"].Environment["SURGE_CLICKHOUSE_ADDRS"])
}
