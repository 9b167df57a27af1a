package deploy

import (
	"debug/elf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/service"
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

// surgeConfig is the Config the named service's process builds in compose:
// its defaults, then the SURGE_ variables compose gives it (config.ApplyEnv,
// as config.Load does). It must validate.
func surgeConfig(t *testing.T, p *types.Project, name string) any {
	t.Helper()
	var cfg interface{ Validate() error }
	switch name {
	case "ingest":
		c := ingest.DefaultConfig()
		cfg = &c
	case "partitioner":
		c := partitioner.DefaultConfig()
		cfg = &c
	case "batcher":
		c := batcher.DefaultConfig()
		cfg = &c
	case "sink":
		c := sink.DefaultConfig()
		cfg = &c
	default:
		require.Failf(t, "unknown service", "%s", name)
	}
	env := envOf(svc(t, p, name))
	require.NoError(t, config.ApplyEnv(cfg, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}), name)
	require.NoError(t, cfg.Validate(), "%s's configuration in compose", name)
	return cfg
}

// common is the shared part of a service Config.
func common(t *testing.T, cfg any) service.Common {
	t.Helper()
	switch c := cfg.(type) {
	case *ingest.Config:
		return c.Common
	case *partitioner.Config:
		return c.Common
	case *batcher.Config:
		return c.Common
	case *sink.Config:
		return c.Common
	}
	require.Failf(t, "unknown config", "%T", cfg)
	return service.Common{}
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		out = append(out, strings.TrimSpace(p))
	}
	return out
}

// otelVars are the standard OpenTelemetry variables telemetry.SetupTracing
// and the OTLP exporter read.
var otelVars = regexp.MustCompile(`^OTEL_(SERVICE_NAME|RESOURCE_ATTRIBUTES|SDK_DISABLED|TRACES_EXPORTER|TRACES_SAMPLER|TRACES_SAMPLER_ARG|EXPORTER_OTLP_(TRACES_)?(ENDPOINT|PROTOCOL|HEADERS|TIMEOUT|INSECURE|COMPRESSION|CERTIFICATE)|BSP_[A-Z_]+)$`)

// TestComposeServicesMatchTheirConfig checks every variable a service is
// given names a setting of its Config (or a standard OTEL_ variable) and
// the Config they make validates, that its admin port is the one its
// health check and Prometheus scrape, that its traces go to Jaeger under
// its own service name, and that every hop agrees on the shard count.
func TestComposeServicesMatchTheirConfig(t *testing.T) {
	p := loadProject(t, nil)
	targets := prometheusTargets(t, bindSource(t, svc(t, p, "prometheus"), "/etc/prometheus/prometheus.yml"))
	jaeger := svc(t, p, "jaeger")
	jaegerPorts := map[uint32]string{}
	for _, port := range jaeger.Ports {
		jaegerPorts[port.Target] = port.Published
	}
	require.Equal(t, map[uint32]string{4318: "4318", 4317: "4317", 16686: "16686"}, jaegerPorts, "OTLP/HTTP and OTLP/gRPC in, the UI")

	admin := map[string]string{}
	for _, name := range surgeServices {
		t.Run(name, func(t *testing.T) {
			s := svc(t, p, name)
			vars := services[name]
			env := envOf(s)
			require.Len(t, env, len(s.Environment), "%s: every variable has a value", name)
			for k := range env {
				switch {
				case strings.HasPrefix(k, config.EnvPrefix):
					require.Contains(t, vars, k, "%s is given %s, which its Config does not read", name, k)
				default:
					require.Regexp(t, otelVars, k, "%s is given %s, which nothing reads", name, k)
				}
			}
			require.Equal(t, "surge-"+name, env["OTEL_SERVICE_NAME"])
			require.Equal(t, "http://jaeger:4318", env["OTEL_EXPORTER_OTLP_ENDPOINT"])

			c := common(t, surgeConfig(t, p, name))
			require.Equal(t, "json", c.Log.Format, "JSON logs in production")
			host, port, err := net.SplitHostPort(c.Admin.Addr)
			require.NoError(t, err)
			require.Empty(t, host, "%s's admin listens on every interface, for the health check and Prometheus", name)
			require.NotContains(t, admin, port, "admin port %s of %s and %s", port, name, admin[port])
			admin[port] = name
			require.Equal(t, []string{"CMD", "wget", "-q", "-O", "/dev/null", "http://localhost:" + port + "/readyz"}, []string(s.HealthCheck.Test))
			require.Equal(t, []string{name + ":" + port}, targets[name], "prometheus scrapes %s on its admin port", name)
		})
	}
	require.Len(t, targets, len(surgeServices), "prometheus scrapes exactly the services")

	shards := surgeConfig(t, p, "partitioner").(*partitioner.Config).Shards
	require.Equal(t, shards, surgeConfig(t, p, "batcher").(*batcher.Config).Shards, "every hop agrees on the shard count")
	require.Equal(t, shards, surgeConfig(t, p, "sink").(*sink.Config).Shards, "every hop agrees on the shard count")
	for _, name := range []string{"partitioner", "batcher", "sink"} {
		require.Equal(t, strconv.Itoa(shards), envOf(svc(t, p, name))["SURGE_SHARDS"], "%s states the shard count, not a default", name)
	}
}

// prometheusTargets reads the Prometheus config compose mounts: targets by
// job, static ones and DNS names (each instance of a compose service) with
// their port.
func prometheusTargets(t *testing.T, path string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var p struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	require.NoError(t, yaml.Unmarshal(data, &p))
	out := map[string][]string{}
	for _, sc := range p.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			out[sc.JobName] = append(out[sc.JobName], st.Targets...)
		}
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				out[sc.JobName] = append(out[sc.JobName], net.JoinHostPort(n, strconv.Itoa(d.Port)))
			}
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
