// Package deploy checks the deployment files that cannot run here (no
// Docker daemon): docker-compose.yml as docker compose itself loads it
// (compose-go: interpolation, anchors and merges, validation), the files it
// mounts, and their agreement with the code.
package deploy

import (
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	promconfig "github.com/prometheus/prometheus/config"
	promdns "github.com/prometheus/prometheus/discovery/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

const root = "../.."

// The services of the compose stack, by role.
var (
	natsNodes          = []string{"nats-0", "nats-1", "nats-2"}
	clickhouseServers  = []string{"clickhouse-0-0", "clickhouse-0-1", "clickhouse-1-0", "clickhouse-1-1"}
	surgeServices      = []string{"ingest", "partitioner", "batcher", "sink"}
	supportingServices = []string{"zookeeper", "jaeger", "prometheus", "grafana"}
)

// loadProject loads docker-compose.yml with the loader docker compose
// uses, as `docker compose config` would with exactly env set (nothing
// from the test's own environment, no .env file): ${VAR:-default} is
// interpolated, anchors and merge keys resolved, the model validated
// (unknown keys, undeclared volumes, depends_on naming a missing service)
// and relative paths made absolute.
func loadProject(t *testing.T, env map[string]string) *types.Project {
	t.Helper()
	dir, err := filepath.Abs(root)
	require.NoError(t, err)
	var list []string
	for k, v := range env {
		list = append(list, k+"="+v)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dir, "docker-compose.yml")},
		cli.WithWorkingDirectory(dir),
		cli.WithName("surge"),
		cli.WithEnv(list),
		cli.WithResolvedPaths(true),
	)
	require.NoError(t, err)
	p, err := opts.LoadProject(t.Context())
	require.NoError(t, err)
	return p
}

// svc returns the named service of p, failing the test when missing.
func svc(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	require.True(t, ok, "compose has no service %s", name)
	return s
}

// envOf is the service's environment after interpolation; a variable
// listed without a value (taken from the host at run time) is absent.
func envOf(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

// bindSource is the absolute host path a service mounts at target.
func bindSource(t *testing.T, s types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == target {
			require.Equal(t, types.VolumeTypeBind, v.Type, "%s: %s is not a bind mount", s.Name, target)
			return v.Source
		}
	}
	require.Failf(t, "missing mount", "%s mounts nothing at %s", s.Name, target)
	return ""
}

func TestComposeStack(t *testing.T) {
	p := loadProject(t, nil)
	want := slices.Concat(natsNodes, clickhouseServers, surgeServices, supportingServices)
	require.ElementsMatch(t, want, slices.Collect(maps.Keys(p.Services)), "the services of the stack")

	hostPorts := map[string]string{}
	volumeUsers := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		s := p.Services[name]
		if s.Build != nil {
			require.FileExists(t, filepath.Join(s.Build.Context, s.Build.Dockerfile), name)
			svc := s.Build.Args["SERVICE"]
			require.NotNil(t, svc, "%s: build arg SERVICE", name)
			require.Equal(t, name, *svc, "%s builds another service", name)
			require.Contains(t, surgeServices, name, "only Surge's services are built")
			require.FileExists(t, filepath.Join(root, "services", name, "cmd", name, "main.go"))
			require.Equal(t, "unless-stopped", s.Restart, "%s comes back after a crash", name)
		} else {
			require.Regexp(t, `^[a-z0-9./_-]+:v?[0-9][0-9A-Za-z.-]*$`, s.Image, "%s runs a pinned release", name)
		}

		require.NotNil(t, s.HealthCheck, "%s has no health check", name)
		require.False(t, s.HealthCheck.Disable, "%s disables its health check", name)
		require.NotEmpty(t, s.HealthCheck.Test, name)
		require.Equal(t, "CMD", s.HealthCheck.Test[0], "%s: an exec-form health check, no shell needed", name)
		require.NotNil(t, s.HealthCheck.Interval, name)
		require.NotNil(t, s.HealthCheck.Timeout, name)
		require.NotNil(t, s.HealthCheck.Retries, name)

		for dep, d := range s.DependsOn {
			require.Contains(t, p.Services, dep, "%s depends on unknown %s", name, dep)
			require.True(t, d.Required, "%s: %s is required", name, dep)
			switch d.Condition {
			case types.ServiceConditionHealthy:
				require.NotNil(t, p.Services[dep].HealthCheck, "%s waits for %s to be healthy, which has no health check", name, dep)
			case types.ServiceConditionStarted:
				require.Equal(t, "jaeger", dep, "%s: only Jaeger is waited for merely to start (a Jaeger outage drops spans, never events)", name)
			default:
				require.Failf(t, "depends_on", "%s waits for %s to be %s", name, dep, d.Condition)
			}
		}

		for _, port := range s.Ports {
			require.NotEmpty(t, port.Published, "%s: port %d published on a random host port", name, port.Target)
			key := port.HostIP + ":" + port.Published + "/" + port.Protocol
			require.NotContains(t, hostPorts, key, "host port %s used by %s and %s", key, name, hostPorts[key])
			hostPorts[key] = name
			require.Equal(t, port.Published, strconv.FormatUint(uint64(port.Target), 10), "%s publishes container port %d on another host port", name, port.Target)
		}

		for _, v := range s.Volumes {
			switch v.Type {
			case types.VolumeTypeBind:
				// Docker creates a missing bind source as an empty directory,
				// and the service starts with no config: the file must exist.
				require.FileExists(t, v.Source, "%s mounts a missing file at %s", name, v.Target)
				require.True(t, v.ReadOnly, "%s may write its config %s", name, v.Source)
				require.True(t, strings.HasPrefix(v.Source, filepath.Join(p.WorkingDir, "deployments")+string(filepath.Separator)),
					"%s mounts %s from outside deployments/", name, v.Source)
			case types.VolumeTypeVolume:
				require.Contains(t, p.Volumes, v.Source, "%s uses an undeclared volume", name)
				require.NotContains(t, volumeUsers, v.Source, "volume %s is used by %s and %s: each holds one server's data", v.Source, name, volumeUsers[v.Source])
				volumeUsers[v.Source] = name
			default:
				require.Failf(t, "volume", "%s: unexpected volume type %s", name, v.Type)
			}
		}

		// One network: every service reaches the others by service name.
		require.Equal(t, []string{"default"}, slices.Collect(maps.Keys(s.Networks)), "%s's networks", name)
	}
	require.ElementsMatch(t, slices.Collect(maps.Keys(p.Volumes)), slices.Collect(maps.Keys(volumeUsers)), "every declared volume is used")
	require.Equal(t, []string{"default"}, slices.Collect(maps.Keys(p.Networks)))

	// The ways in that the file's header names.
	for port, svc := range map[string]string{"8080": "ingest", "4222": "nats-0", "1883": "nats-0", "8123": "clickhouse-0-0",
		"9000": "clickhouse-0-0", "16686": "jaeger", "4317": "jaeger", "4318": "jaeger", "9090": "prometheus", "3000": "grafana"} {
		assert.Equal(t, svc, hostPorts[":"+port+"/tcp"], "host port %s", port)
	}

	// What every Surge service waits for before it starts.
	for _, name := range surgeServices {
		s := svc(t, p, name)
		for _, n := range natsNodes {
			require.Contains(t, s.DependsOn, n, name)
			require.Equal(t, types.ServiceConditionHealthy, s.DependsOn[n].Condition, "%s waits for %s", name, n)
		}
	}
	for _, ch := range clickhouseServers {
		require.Equal(t, types.ServiceConditionHealthy, svc(t, p, "sink").DependsOn[ch].Condition, "the sink waits for %s", ch)
		require.Equal(t, types.ServiceConditionHealthy, svc(t, p, ch).DependsOn["zookeeper"].Condition, "%s waits for ZooKeeper", ch)
	}
	for _, name := range surgeServices {
		require.Equal(t, types.ServiceConditionHealthy, svc(t, p, "prometheus").DependsOn[name].Condition, "prometheus waits for %s", name)
	}
}

// variable is one ${...} reference of docker-compose.yml.
var variable = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}`)

// TestComposeInterpolation checks every variable of the file has a default,
// so `docker compose up` works with nothing set, and that setting the
// passwords reaches both the NATS servers and the services, and the
// operators' key ingest.
func TestComposeInterpolation(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	require.NoError(t, err)
	refs := variable.FindAllStringSubmatch(string(data), -1)
	require.NotEmpty(t, refs)
	names := map[string]bool{}
	for _, r := range refs {
		require.True(t, strings.HasPrefix(r[2], ":-"), "${%s%s} has no default", r[1], r[2])
		names[r[1]] = true
	}
	require.Equal(t, []string{"SURGE_DEMO_PASSWORD", "SURGE_INGEST_ADMIN_KEY", "SURGE_SERVICE_PASSWORD"}, slices.Sorted(maps.Keys(names)))

	for _, tc := range []struct {
		name                 string
		env                  map[string]string
		service, demo, admin string
	}{
		{"defaults", nil, "surge-local", "demo-local", ""},
		{"set", map[string]string{"SURGE_SERVICE_PASSWORD": "svc-secret", "SURGE_DEMO_PASSWORD": "demo-secret", "SURGE_INGEST_ADMIN_KEY": "operators-key-0123"},
			"svc-secret", "demo-secret", "operators-key-0123"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := loadProject(t, tc.env)
			for name, s := range p.Services {
				for k, v := range s.Environment {
					require.NotNil(t, v, "%s: %s would be taken from the host", name, k)
					require.NotContains(t, *v, "$", "%s: %s is not interpolated", name, k)
				}
			}
			for _, n := range natsNodes {
				env := envOf(svc(t, p, n))
				require.Equal(t, tc.service, env["SURGE_SERVICE_PASSWORD"], n)
				require.Equal(t, tc.demo, env["SURGE_DEMO_PASSWORD"], n)
			}
			for _, name := range surgeServices {
				require.Equal(t, tc.service, envOf(svc(t, p, name))["SURGE_NATS_PASSWORD"], name)
			}
			// Empty leaves ingest's erasure route off.
			require.Equal(t, tc.admin, envOf(svc(t, p, "ingest"))["SURGE_INGEST_ADMIN_KEY"])
		})
	}
}

// TestComposeMonitoring checks Prometheus and Grafana as compose runs
// them: prometheus.yml loaded by Prometheus' own config loader scrapes
// every instance of each service at its admin port and loads the alert
// rules from where compose mounts them; Grafana is provisioned with that
// Prometheus and the dashboard, from the files compose mounts.
func TestComposeMonitoring(t *testing.T) {
	p := loadProject(t, nil)

	prom := svc(t, p, "prometheus")
	promYML := bindSource(t, prom, "/etc/prometheus/prometheus.yml")
	require.Equal(t, filepath.Join(p.WorkingDir, "deployments", "prometheus", "prometheus.yml"), promYML)
	cfg, err := promconfig.LoadFile(promYML, false, slog.New(slog.DiscardHandler))
	require.NoError(t, err, "Prometheus refuses its configuration")
	require.Len(t, cfg.RuleFiles, 1)
	require.Equal(t, filepath.Join(p.WorkingDir, alertsFile), bindSource(t, prom, cfg.RuleFiles[0]), "the rules Prometheus loads are alerts.yml")

	var jobs []string
	for _, sc := range cfg.ScrapeConfigs {
		jobs = append(jobs, sc.JobName)
		require.Contains(t, surgeServices, sc.JobName, "Prometheus scrapes %s", sc.JobName)
		require.Equal(t, "/metrics", sc.MetricsPath, sc.JobName)
		require.Len(t, sc.ServiceDiscoveryConfigs, 1, sc.JobName)
		dns, ok := sc.ServiceDiscoveryConfigs[0].(*promdns.SDConfig)
		require.True(t, ok, "%s: every instance of the service is found by its compose DNS name", sc.JobName)
		require.Equal(t, "A", dns.Type, sc.JobName)
		require.Equal(t, []string{sc.JobName}, dns.Names, "%s: the compose service of that name", sc.JobName)
		_, port, err := net.SplitHostPort(envOf(svc(t, p, sc.JobName))["SURGE_ADMIN_ADDR"])
		require.NoError(t, err, sc.JobName)
		require.Equal(t, port, strconv.Itoa(dns.Port), "%s: the admin port, where /metrics is", sc.JobName)
	}
	require.ElementsMatch(t, surgeServices, jobs)

	graf := svc(t, p, "grafana")
	require.Equal(t, types.ServiceConditionHealthy, graf.DependsOn["prometheus"].Condition, "grafana waits for prometheus")
	env := envOf(graf)
	require.Equal(t, "true", env["GF_AUTH_ANONYMOUS_ENABLED"], "the dashboard opens without a login")
	require.Equal(t, "Viewer", env["GF_AUTH_ANONYMOUS_ORG_ROLE"], "anonymous visitors only view")

	ds := provisionedDatasource(t)
	require.Equal(t, filepath.Join(p.WorkingDir, datasourceFile),
		bindSource(t, graf, "/etc/grafana/provisioning/datasources/"+filepath.Base(datasourceFile)))
	require.Equal(t, "prometheus", ds.Type)
	u, err := url.Parse(ds.URL)
	require.NoError(t, err)
	require.Equal(t, "prometheus", u.Hostname(), "the compose service")
	require.Equal(t, "9090", u.Port())
	require.Equal(t, uint32(9090), prom.Ports[0].Target)

	providerFile := filepath.Join("deployments", "grafana", "provisioning", "dashboards", "surge.yml")
	require.Equal(t, filepath.Join(p.WorkingDir, providerFile),
		bindSource(t, graf, "/etc/grafana/provisioning/dashboards/surge.yml"))
	var provider struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name    string `yaml:"name"`
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	data, err := os.ReadFile(filepath.Join(root, providerFile))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(data, &provider))
	require.Equal(t, 1, provider.APIVersion)
	require.Len(t, provider.Providers, 1)
	require.Equal(t, "file", provider.Providers[0].Type)
	dir := provider.Providers[0].Options.Path
	require.Equal(t, filepath.Join(p.WorkingDir, dashboardFile),
		bindSource(t, graf, dir+"/"+filepath.Base(dashboardFile)), "the dashboard is in the folder the provider reads")
	require.Equal(t, dir+"/"+filepath.Base(dashboardFile), env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"], "the home dashboard")
}

// datasourceFile provisions Grafana's Prometheus datasource.
var datasourceFile = filepath.Join("deployments", "grafana", "provisioning", "datasources", "prometheus.yml")

// grafanaDatasource is one provisioned Grafana datasource.
type grafanaDatasource struct {
	Name      string `yaml:"name"`
	UID       string `yaml:"uid"`
	Type      string `yaml:"type"`
	URL       string `yaml:"url"`
	IsDefault bool   `yaml:"isDefault"`
}

// provisionedDatasource is the one datasource Grafana is provisioned with.
func provisionedDatasource(t *testing.T) grafanaDatasource {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, datasourceFile))
	require.NoError(t, err)
	var f struct {
		APIVersion  int                 `yaml:"apiVersion"`
		Datasources []grafanaDatasource `yaml:"datasources"`
	}
	require.NoError(t, yaml.Unmarshal(data, &f))
	require.Equal(t, 1, f.APIVersion)
	require.Len(t, f.Datasources, 1)
	ds := f.Datasources[0]
	require.NotEmpty(t, ds.UID, "the dashboard names its datasource by uid")
	require.True(t, ds.IsDefault)
	return ds
}
