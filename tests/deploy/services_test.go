package deploy

import (
	"debug/elf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/services/batcher"
	"github.com/surge-events/surge/services/ingest"
	"github.com/surge-events/surge/services/partitioner"
	"github.com/surge-events/surge/services/sink"
)

// services are the four Surge services and the variables their Config reads.
var services = map[string][]string{
	"ingest":      envNames(&ingest.Config{}),
	"partitioner": envNames(&partitioner.Config{}),
	"batcher":     envNames(&batcher.Config{}),
	"sink":        envNames(&sink.Config{}),
}

func envNames(cfg any) []string {
	var out []string
	for _, v := range config.EnvVars(cfg) {
		name, _, _ := strings.Cut(v, "=")
		out = append(out, name)
	}
	return out
}

// otelVars are the standard OpenTelemetry variables telemetry.SetupTracing
// and the OTLP exporter read.
var otelVars = regexp.MustCompile(`^OTEL_(SERVICE_NAME|RESOURCE_ATTRIBUTES|SDK_DISABLED|TRACES_EXPORTER|TRACES_SAMPLER|TRACES_SAMPLER_ARG|EXPORTER_OTLP_(TRACES_)?(ENDPOINT|PROTOCOL|HEADERS|TIMEOUT|INSECURE|COMPRESSION|CERTIFICATE)|BSP_[A-Z_]+)$`)

// TestComposeServicesMatchTheirConfig checks every variable a service is
// given names a setting of its Config (or a standard OTEL_ variable), that
// its admin port is the one its health check and Prometheus scrape, and
// that its traces go to Jaeger under its own service name.
func TestComposeServicesMatchTheirConfig(t *testing.T) {
	c := loadCompose(t)
	targets := prometheusTargets(t)
	jaeger, ok := c.Services["jaeger"]
	require.True(t, ok)
	require.Contains(t, jaeger.Ports, "4318:4318", "OTLP/HTTP in")
	require.Contains(t, jaeger.Ports, "4317:4317", "OTLP/gRPC in")
	require.Contains(t, jaeger.Ports, "16686:16686", "the UI")

	for name, vars := range services {
		t.Run(name, func(t *testing.T) {
			s, ok := c.Services[name]
			require.True(t, ok)
			for k := range s.Environment {
				switch {
				case strings.HasPrefix(k, config.EnvPrefix):
					require.Contains(t, vars, k, "%s is given %s, which its Config does not read", name, k)
				default:
					require.Regexp(t, otelVars, k, "%s is given %s, which nothing reads", name, k)
				}
			}
			require.Equal(t, "surge-"+name, s.Environment["OTEL_SERVICE_NAME"])
			require.Equal(t, "http://jaeger:4318", s.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
			require.Equal(t, "json", s.Environment["SURGE_LOG_FORMAT"], "JSON logs in production")

			_, port, err := net.SplitHostPort(s.Environment["SURGE_ADMIN_ADDR"])
			require.NoError(t, err)
			require.Equal(t, []string{"CMD", "wget", "-q", "-O", "/dev/null", "http://localhost:" + port + "/readyz"}, s.Healthcheck.Test)
			require.Equal(t, []string{name + ":" + port}, targets[name], "prometheus scrapes %s on its admin port", name)
			require.Contains(t, c.Services["prometheus"].DependsOn, name)
		})
	}
	require.Len(t, targets, len(services), "prometheus scrapes exactly the services")
	shards := c.Services["partitioner"].Environment["SURGE_SHARDS"]
	require.NotEmpty(t, shards)
	require.Equal(t, shards, c.Services["batcher"].Environment["SURGE_SHARDS"], "every hop agrees on the shard count")
	require.Equal(t, shards, c.Services["sink"].Environment["SURGE_SHARDS"], "every hop agrees on the shard count")
}

// prometheusTargets reads deployments/prometheus/prometheus.yml: targets by job.
func prometheusTargets(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "deployments", "prometheus", "prometheus.yml"))
	require.NoError(t, err)
	var p struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	require.NoError(t, yaml.Unmarshal(data, &p))
	out := map[string][]string{}
	for _, sc := range p.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			out[sc.JobName] = append(out[sc.JobName], st.Targets...)
		}
	}
	return out
}

// dockerBuild is the build command of deployments/Dockerfile, which
// TestStaticBinaries runs the same way.
const dockerBuild = "GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/service ./cmd/${SERVICE}"

// TestStaticBinaries builds every service as deployments/Dockerfile does
// (its module alone, no cgo) and checks the binary is static: no program
// interpreter and no shared libraries, so it runs on any base image.
func TestStaticBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four binaries")
	}
	dockerfile, err := os.ReadFile(filepath.Join(root, "deployments", "Dockerfile"))
	require.NoError(t, err)
	require.Contains(t, string(dockerfile), "RUN cd services/${SERVICE} && "+dockerBuild)

	out := t.TempDir()
	names := make([]string, 0, len(services))
	for name := range services {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			bin := filepath.Join(out, name)
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./cmd/"+name)
			cmd.Dir = filepath.Join(root, "services", name)
			cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
			msg, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", msg)

			f, err := elf.Open(bin)
			require.NoError(t, err)
			defer f.Close()
			for _, p := range f.Progs {
				require.NotEqual(t, elf.PT_INTERP, p.Type, "%s asks for a dynamic loader", name)
			}
			libs, err := f.ImportedLibraries()
			require.NoError(t, err)
			require.Empty(t, libs, "%s links shared libraries", name)
		})
	}
}
