// Package helm checks the Helm chart deployments/helm/surge the way its
// users' tools see it, with no cluster: Helm's own Go SDK lints it and
// renders it (as `helm template` does) for each value set in the chart's
// ci/ folder, every rendered object is decoded strictly into its
// Kubernetes Go type (KEDA's and the Prometheus operator's for theirs),
// and the invariants that keep the pipeline whole are asserted: one shard
// count and one NATS address for every service, a configuration each
// service accepts, probes on the admin port, grace periods
// longer than the drain, disruption budgets and Services that select
// pods. The services' configurations are checked by the services' own
// binaries (-h, --validate, --print-config). It is a module of its own, outside go.work, so Helm's and
// Kubernetes' dependencies stay out of the other modules.
package helm

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kedav1alpha1 "github.com/kedacore/keda/v2/apis/keda/v1alpha1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	kubefake "helm.sh/helm/v4/pkg/kube/fake"
	release "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage"
	"helm.sh/helm/v4/pkg/storage/driver"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "../../deployments/helm/surge"
	alertsFile  = "../../deployments/prometheus/alerts.yml"
	releaseName = "surge"
	namespace   = "pipeline"
)

// natsDrainTimeout is pkg/service.DrainTimeout, the bound of a service's
// NATS drain after its own shutdown. (This module imports no Surge module:
// KEDA's requirements would raise their dependencies, clickhouse-go among
// them, to versions they do not build with.) Surge's names KEDA reads are
// literals here for the same reason: streams.Ingest and Batches,
// partitioner.ConsumerName, sink.ConsumerName.
const natsDrainTimeout = 10 * time.Second

// The four services, in pipeline order.
var services = []string{"ingest", "partitioner", "batcher", "sink"}

// rendered is what the chart made for one value set, by kind and name.
type rendered struct {
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	services        map[string]*corev1.Service
	deployments     map[string]*appsv1.Deployment
	pdbs            map[string]*policyv1.PodDisruptionBudget
	hpas            map[string]*autoscalingv2.HorizontalPodAutoscaler
	scaledObjects   map[string]*kedav1alpha1.ScaledObject
	serviceMonitors map[string]*monitoringv1.ServiceMonitor
	rules           map[string]*monitoringv1.PrometheusRule
}

// decodeStrict decodes one manifest into out: YAML to JSON, then JSON with
// unknown fields refused, so a misspelt or misplaced field fails.
func decodeStrict[T any](t *testing.T, doc []byte, m map[string]*T) {
	t.Helper()
	obj := new(T)
	require.NoError(t, yaml.UnmarshalStrict(doc, obj), "%s", doc)
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	require.NoError(t, yaml.Unmarshal(doc, &meta))
	name := meta.Metadata.Name
	require.NotEmpty(t, name, "%s", doc)
	require.NotContains(t, m, name, "two objects of one kind named %s", name)
	m[name] = obj
}

// loadChart loads the chart as helm does.
func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	require.NoError(t, err)
	return ch
}

// valuesOf reads a value set of the chart's ci/ folder.
func valuesOf(t *testing.T, file string) common.Values {
	t.Helper()
	vals, err := common.ReadValuesFile(filepath.Join(chartDir, "ci", file))
	require.NoError(t, err)
	return vals
}

// render renders the chart as `helm template` does (an install dry run on
// the client, no cluster), with KEDA's and the Prometheus operator's API
// groups known, and decodes every object strictly.
func render(t *testing.T, vals common.Values) *rendered {
	t.Helper()
	rel := renderRelease(t, loadChart(t), releaseName, vals, "keda.sh/v1alpha1", "monitoring.coreos.com/v1")
	require.Empty(t, rel.Hooks)

	r := &rendered{
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		services: map[string]*corev1.Service{}, deployments: map[string]*appsv1.Deployment{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		scaledObjects: map[string]*kedav1alpha1.ScaledObject{}, serviceMonitors: map[string]*monitoringv1.ServiceMonitor{},
		rules: map[string]*monitoringv1.PrometheusRule{},
	}
	for _, doc := range strings.Split(rel.Manifest, "\n---\n") {
		doc = strings.TrimPrefix(strings.TrimSpace(doc), "---")
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head metav1.TypeMeta
		require.NoError(t, yaml.Unmarshal([]byte(doc), &head))
		b := []byte(doc)
		switch head.APIVersion + " " + head.Kind {
		case "v1 ConfigMap":
			decodeStrict(t, b, r.configMaps)
		case "v1 Secret":
			decodeStrict(t, b, r.secrets)
		case "v1 Service":
			decodeStrict(t, b, r.services)
		case "apps/v1 Deployment":
			decodeStrict(t, b, r.deployments)
		case "policy/v1 PodDisruptionBudget":
			decodeStrict(t, b, r.pdbs)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			decodeStrict(t, b, r.hpas)
		case "keda.sh/v1alpha1 ScaledObject":
			decodeStrict(t, b, r.scaledObjects)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			decodeStrict(t, b, r.serviceMonitors)
		case "monitoring.coreos.com/v1 PrometheusRule":
			decodeStrict(t, b, r.rules)
		default:
			require.Failf(t, "unexpected object", "%s %s:\n%s", head.APIVersion, head.Kind, doc)
		}
	}
	return r
}

// renderRelease renders a chart as `helm template` does: an install dry
// run on the client, no cluster, into namespace, with the API groups
// apiVersions known besides Kubernetes' own.
func renderRelease(t *testing.T, ch *chart.Chart, name string, vals common.Values, apiVersions ...string) *release.Release {
	t.Helper()
	cfg := action.NewConfiguration()
	cfg.Releases = storage.Init(driver.NewMemory())
	cfg.KubeClient = &kubefake.PrintingKubeClient{Out: io.Discard}
	install := action.NewInstall(cfg)
	install.DryRunStrategy = action.DryRunClient
	install.ReleaseName = name
	install.Namespace = namespace
	install.Replace = true
	install.APIVersions = common.VersionSet(apiVersions)
	ri, err := install.RunWithContext(t.Context(), ch, vals)
	require.NoError(t, err)
	rel, ok := ri.(*release.Release)
	require.True(t, ok, "release type %T", ri)
	return rel
}

// deployment is the Deployment of one service.
func (r *rendered) deployment(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	d, ok := r.deployments[releaseName+"-"+name]
	require.True(t, ok, "no Deployment for %s", name)
	return d
}

// env is the environment the service's container gets: its ConfigMaps'
// entries, then its own variables, secrets read from secretData (by
// Secret name and key).
func (r *rendered) env(t *testing.T, name string, secretData map[string]map[string]string) map[string]string {
	t.Helper()
	c := r.deployment(t, name).Spec.Template.Spec.Containers
	require.Len(t, c, 1)
	out := map[string]string{}
	for _, from := range c[0].EnvFrom {
		require.NotNil(t, from.ConfigMapRef, "%s: envFrom other than a ConfigMap", name)
		cm, ok := r.configMaps[from.ConfigMapRef.Name]
		require.True(t, ok, "%s reads ConfigMap %s, which the chart does not make", name, from.ConfigMapRef.Name)
		maps.Copy(out, cm.Data)
	}
	for _, e := range c[0].Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			data, ok := secretData[ref.Name]
			require.True(t, ok, "%s: %s reads Secret %s, which does not exist", name, e.Name, ref.Name)
			v, ok := data[ref.Key]
			if !ok && ref.Optional != nil && *ref.Optional {
				continue // Kubernetes leaves the variable unset
			}
			require.True(t, ok, "%s: %s reads key %s, which Secret %s lacks", name, e.Name, ref.Key, ref.Name)
			out[e.Name] = v
		default:
			require.Failf(t, "unexpected env source", "%s: %s", name, e.Name)
		}
	}
	return out
}

// printedConfig is the part of a service's --print-config this test reads.
type printedConfig struct {
	NATS struct {
		URL      string `json:"url"`
		Password string `json:"password"`
	} `json:"nats"`
	Streams struct {
		Replicas int `json:"replicas"`
	} `json:"streams"`
	Admin struct {
		Addr string `json:"addr"`
	} `json:"admin"`
	Shards          int    `json:"shards"`
	Ownership       string `json:"ownership"`
	LeaseTTL        string `json:"lease_ttl"`
	ShutdownTimeout string `json:"shutdown_timeout"`
	PublishTimeout  string `json:"publish_timeout"`
	HTTP            struct {
		ShutdownTimeout string `json:"shutdown_timeout"`
	} `json:"http"`
}

// The service binaries, built once from the source tree.
var (
	binsOnce sync.Once
	binsDir  string
	binsErr  error
)

// serviceBinary is the path of the named service's binary, built with the
// workspace (go.work) like `surge up --cluster` builds them.
func serviceBinary(t *testing.T, name string) string {
	t.Helper()
	binsOnce.Do(func() {
		binsDir, binsErr = os.MkdirTemp("", "surge-helm-bins")
		if binsErr != nil {
			return
		}
		args := []string{"build", "-o", binsDir + string(filepath.Separator)}
		for _, s := range services {
			args = append(args, "./services/"+s+"/cmd/"+s)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = "../.."
		// This module runs with GOWORK=off; the services build in the workspace.
		cmd.Env = append(os.Environ(), "GOWORK=")
		if out, err := cmd.CombinedOutput(); err != nil {
			binsErr = fmt.Errorf("build the services: %w\n%s", err, out)
		}
	})
	require.NoError(t, binsErr)
	return filepath.Join(binsDir, name)
}

// runService runs the service's binary with exactly env and args.
func runService(t *testing.T, name string, env map[string]string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), serviceBinary(t, name), args...)
	cmd.Env = []string{}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %v: %s", name, args, out)
	return string(out)
}

var surgeVar = regexp.MustCompile(`\bSURGE_[A-Z0-9_]+`)

// serviceConfig runs the service's own configuration loading on env: every
// SURGE_ variable must be one its -h lists, --validate must accept the
// result, and --print-config shows what it made. It returns that and how
// long the service's shutdown may take before the NATS drain: ingest's
// HTTP shutdown, the partitioner's last publish, the batcher's final
// flush, the sink's work on the batch in hand.
func serviceConfig(t *testing.T, name string, env map[string]string) (printedConfig, time.Duration) {
	t.Helper()
	known := map[string]bool{}
	// -h prints every variable and exits 2, as flag's help does.
	help, err := exec.CommandContext(t.Context(), serviceBinary(t, name), "-h").CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "%s -h", name)
	require.Equal(t, 2, exit.ExitCode(), "%s -h: %s", name, help)
	for _, v := range surgeVar.FindAllString(string(help), -1) {
		known[v] = true
	}
	for k := range env {
		if !strings.HasPrefix(k, "OTEL_") {
			require.True(t, known[k], "%s is given %s, which its -h does not list", name, k)
		}
	}
	require.Equal(t, name+": configuration is valid\n", runService(t, name, env, "--validate"))
	var cfg printedConfig
	require.NoError(t, yaml.Unmarshal([]byte(runService(t, name, env, "--print-config")), &cfg), name)
	bound := map[string]string{
		"ingest": cfg.HTTP.ShutdownTimeout, "partitioner": cfg.PublishTimeout,
		"batcher": cfg.ShutdownTimeout, "sink": cfg.ShutdownTimeout,
	}[name]
	d, err := time.ParseDuration(bound)
	require.NoError(t, err, "%s: shutdown bound %q", name, bound)
	return cfg, d
}

// selects says whether sel selects the pods of d.
func selects(t *testing.T, sel *metav1.LabelSelector, d *appsv1.Deployment) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	require.NoError(t, err)
	require.False(t, s.Empty(), "an empty selector selects every pod")
	return s.Matches(labels.Set(d.Spec.Template.Labels))
}

// selected is the one Deployment whose pods sel selects.
func (r *rendered) selected(t *testing.T, sel *metav1.LabelSelector, what string) *appsv1.Deployment {
	t.Helper()
	var found []*appsv1.Deployment
	for _, d := range r.deployments {
		if selects(t, sel, d) {
			found = append(found, d)
		}
	}
	require.Len(t, found, 1, "%s selects the pods of exactly one Deployment", what)
	return found[0]
}

// port is the container port named name of d's container.
func port(t *testing.T, d *appsv1.Deployment, name string) int32 {
	t.Helper()
	for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	require.Failf(t, "no such port", "%s has no container port %s", d.Name, name)
	return 0
}

func TestChartLints(t *testing.T) {
	for _, file := range []string{"minimal-values.yaml", "production-values.yaml", "external-secrets-values.yaml"} {
		t.Run(file, func(t *testing.T) {
			lint := action.NewLint()
			lint.Strict = true
			lint.Namespace = namespace
			res := lint.Run([]string{chartDir}, valuesOf(t, file))
			require.Empty(t, res.Errors)
			require.Equal(t, 1, res.TotalChartsLinted)
		})
	}
}

// TestChartRenders renders each value set and checks the invariants.
func TestChartRenders(t *testing.T) {
	cases := []struct {
		name, file string
		shards     int
		// secretData stands for the Secret the chart does not make.
		secretData map[string]map[string]string
		// autoscaled: ingest by an HPA, the others by KEDA; monitoring:
		// a ServiceMonitor and the rules.
		autoscaled, monitoring bool
	}{
		{name: "minimal", file: "minimal-values.yaml", shards: 8},
		{name: "production", file: "production-values.yaml", shards: 16, autoscaled: true, monitoring: true},
		{
			name: "external secrets", file: "external-secrets-values.yaml", shards: 8,
			secretData: map[string]map[string]string{"surge-credentials": {
				"nats-password": "from-vault", "clickhouse-password": "from-vault-too", "ingest-api-keys": "k1=web",
			}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vals := valuesOf(t, tc.file)
			r := render(t, vals)

			secretData := map[string]map[string]string{}
			maps.Copy(secretData, tc.secretData)
			if tc.secretData == nil {
				require.Len(t, r.secrets, 1)
				for name, s := range r.secrets {
					secretData[name] = s.StringData
				}
			} else {
				require.Empty(t, r.secrets, "the chart makes no Secret when one exists")
			}

			require.Len(t, r.deployments, 4)
			var natsURL string
			for _, name := range services {
				d := r.deployment(t, name)
				env := r.env(t, name, secretData)
				cfg, shutdown := serviceConfig(t, name, env)
				if name == "ingest" {
					// The operators' key reaches ingest from the Secret
					// when set, and is absent (the route off) otherwise.
					var want string
					set := false
					for _, data := range secretData { // one Secret
						want, set = data["ingest-admin-key"]
					}
					got, ok := env["SURGE_INGEST_ADMIN_KEY"]
					require.Equal(t, set, ok)
					require.Equal(t, want, got)
				}

				// One shard count and one NATS address everywhere.
				if name != "ingest" {
					require.Equal(t, tc.shards, cfg.Shards, name)
				}
				if natsURL == "" {
					natsURL = cfg.NATS.URL
				}
				require.Equal(t, natsURL, cfg.NATS.URL, name)
				require.Equal(t, "nats://nats-0.nats-headless:4222,nats://nats-1.nats-headless:4222,nats://nats-2.nats-headless:4222", cfg.NATS.URL)
				require.Equal(t, 3, cfg.Streams.Replicas, name)
				require.NotEmpty(t, cfg.NATS.Password, name)
				require.Equal(t, "surge-"+name, env["OTEL_SERVICE_NAME"])

				// Probes on the admin port, the one SURGE_ADMIN_ADDR names.
				_, adminPort, err := splitPort(cfg.Admin.Addr)
				require.NoError(t, err, name)
				require.Equal(t, adminPort, port(t, d, "admin"), name)
				c := d.Spec.Template.Spec.Containers[0]
				for probe, path := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz", c.StartupProbe: "/healthz"} {
					require.NotNil(t, probe, name)
					require.NotNil(t, probe.HTTPGet, name)
					require.Equal(t, path, probe.HTTPGet.Path, name)
					require.Equal(t, "admin", probe.HTTPGet.Port.String(), name)
				}

				// The grace period outlasts the drain: the service's own
				// shutdown, then the NATS drain.
				grace := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
				require.Greater(t, grace, shutdown+natsDrainTimeout, "%s: grace period against shutdown %s + NATS drain %s", name, shutdown, natsDrainTimeout)

				// Leases for the shard owners.
				if name == "batcher" || name == "sink" {
					require.Equal(t, "lease", cfg.Ownership, name)
				}

				// Anti-affinity spreads the service's own pods.
				terms := d.Spec.Template.Spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution
				require.Len(t, terms, 1, name)
				require.Equal(t, "kubernetes.io/hostname", terms[0].PodAffinityTerm.TopologyKey)
				require.Same(t, d, r.selected(t, terms[0].PodAffinityTerm.LabelSelector, name+"'s anti-affinity"))
				require.True(t, selects(t, d.Spec.Selector, d), "%s's selector selects its own pods", name)

				// Resources requested, replicas left to the autoscaler.
				require.False(t, c.Resources.Requests.Cpu().IsZero(), name)
				require.False(t, c.Resources.Requests.Memory().IsZero(), name)
				if tc.autoscaled {
					require.Nil(t, d.Spec.Replicas, "%s: an autoscaled Deployment leaves replicas to its autoscaler", name)
				} else {
					require.NotNil(t, d.Spec.Replicas, name)
				}

				// A disruption budget that selects these pods and lets one go.
				pdb, ok := r.pdbs[d.Name]
				require.True(t, ok, "%s has no PodDisruptionBudget", name)
				require.Same(t, d, r.selected(t, pdb.Spec.Selector, "PDB "+pdb.Name))
				minPods := int32(0)
				if d.Spec.Replicas != nil {
					minPods = *d.Spec.Replicas
				}
				if hpa, ok := r.hpas[d.Name]; ok {
					minPods = *hpa.Spec.MinReplicas
				}
				if so, ok := r.scaledObjects[d.Name]; ok {
					minPods = *so.Spec.MinReplicaCount
				}
				require.Less(t, pdb.Spec.MinAvailable.IntVal, minPods, "%s: the PDB must let a node drain", name)
			}

			// Every Service selects one Deployment's pods on a port it has.
			for _, s := range r.services {
				d := r.selected(t, &metav1.LabelSelector{MatchLabels: s.Spec.Selector}, "Service "+s.Name)
				for _, p := range s.Spec.Ports {
					port(t, d, p.TargetPort.String())
				}
			}
			ingestSvc, ok := r.services[releaseName+"-ingest"]
			require.True(t, ok)
			require.Equal(t, "http", ingestSvc.Spec.Ports[0].TargetPort.String())

			checkAutoscaling(t, r, tc.autoscaled, tc.shards)
			checkMonitoring(t, r, tc.monitoring)
		})
	}
}

func checkAutoscaling(t *testing.T, r *rendered, on bool, shards int) {
	t.Helper()
	if !on {
		require.Empty(t, r.hpas)
		require.Empty(t, r.scaledObjects)
		return
	}
	require.Len(t, r.hpas, 1)
	hpa := r.hpas[releaseName+"-ingest"]
	require.NotNil(t, hpa)
	require.Equal(t, "Deployment", hpa.Spec.ScaleTargetRef.Kind)
	require.Contains(t, r.deployments, hpa.Spec.ScaleTargetRef.Name)

	require.Len(t, r.scaledObjects, 3)
	for _, name := range []string{"partitioner", "batcher", "sink"} {
		so, ok := r.scaledObjects[releaseName+"-"+name]
		require.True(t, ok, name)
		require.Same(t, r.deployment(t, name), r.deployments[so.Spec.ScaleTargetRef.Name], name)
		require.LessOrEqual(t, *so.Spec.MaxReplicaCount, int32(shards), "%s: more instances than shards would hold none", name)
		var consumers []string
		for _, tr := range so.Spec.Triggers {
			switch tr.Type {
			case "nats-jetstream":
				require.Equal(t, "nats-headless:8222", tr.Metadata["natsServerMonitoringEndpoint"])
				_, err := strconv.Atoi(tr.Metadata["lagThreshold"])
				require.NoError(t, err)
				consumers = append(consumers, tr.Metadata["stream"]+"/"+tr.Metadata["consumer"])
			case "prometheus":
				require.Contains(t, []string{"batcher", "partitioner"}, name)
				require.Contains(t, tr.Metadata["query"], "surge_"+name+"_consumer_pending")
				_, err := strconv.Atoi(tr.Metadata["threshold"])
				require.NoError(t, err)
			default:
				require.Failf(t, "unexpected trigger", "%s: %s", name, tr.Type)
			}
		}
		switch name {
		case "partitioner":
			require.Empty(t, consumers, "one consumer per tenant: no name to follow")
		case "sink":
			var want []string
			for k := range shards {
				want = append(want, fmt.Sprintf("BATCHES/sink-shard-%d", k))
			}
			require.Equal(t, want, consumers)
		}
	}
}

func checkMonitoring(t *testing.T, r *rendered, on bool) {
	t.Helper()
	if !on {
		require.Empty(t, r.serviceMonitors)
		require.Empty(t, r.rules)
		return
	}
	require.Len(t, r.serviceMonitors, 1)
	for _, sm := range r.serviceMonitors {
		// The job label is each service's name, as the alerts match it.
		var jobs []string
		for _, s := range r.services {
			sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			require.NoError(t, err)
			if !sel.Matches(labels.Set(s.Labels)) {
				continue
			}
			jobs = append(jobs, s.Labels[sm.Spec.JobLabel])
			require.Len(t, sm.Spec.Endpoints, 1)
			require.Equal(t, s.Spec.Ports[0].Name, sm.Spec.Endpoints[0].Port)
			require.Equal(t, "/metrics", sm.Spec.Endpoints[0].Path)
		}
		require.ElementsMatch(t, services, jobs)
		require.Equal(t, "kube-prometheus-stack", sm.Labels["release"])
	}

	// The PrometheusRule holds deployments/prometheus/alerts.yml's rules.
	require.Len(t, r.rules, 1)
	data, err := os.ReadFile(alertsFile)
	require.NoError(t, err)
	var want monitoringv1.PrometheusRuleSpec
	require.NoError(t, yaml.UnmarshalStrict(data, &want))
	for _, rule := range r.rules {
		require.Equal(t, want, rule.Spec)
		require.NotEmpty(t, rule.Spec.Groups)
	}
}

// splitPort is the port of a host:port listen address.
func splitPort(addr string) (string, int32, error) {
	i := strings.LastIndexByte(addr, ':')
	p, err := strconv.Atoi(addr[i+1:])
	return addr[:i], int32(p), err
}

// TestChartFilesMatch checks the chart's copy of the alert rules is the
// file the compose Prometheus loads, byte for byte.
func TestChartFilesMatch(t *testing.T) {
	chartCopy, err := os.ReadFile(filepath.Join(chartDir, "files", "alerts.yml"))
	require.NoError(t, err)
	orig, err := os.ReadFile(alertsFile)
	require.NoError(t, err)
	require.True(t, bytes.Equal(orig, chartCopy), "copy %s to %s/files/alerts.yml", alertsFile, chartDir)
}

// TestChartRefusesIncompleteValues checks the chart stops a render that
// would start the services without what they need.
func TestChartRefusesIncompleteValues(t *testing.T) {
	cases := []struct {
		name string
		vals string
		want string
	}{
		{name: "no NATS password", vals: "{}", want: "secrets.natsPassword"},
		{name: "no existing secret named", vals: "secrets: {create: false}", want: "secrets.existingSecret"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vals, err := common.ReadValues([]byte(tc.vals))
			require.NoError(t, err)
			cfg := action.NewConfiguration()
			cfg.Releases = storage.Init(driver.NewMemory())
			cfg.KubeClient = &kubefake.PrintingKubeClient{Out: io.Discard}
			install := action.NewInstall(cfg)
			install.DryRunStrategy = action.DryRunClient
			install.ReleaseName = releaseName
			install.Namespace = namespace
			_, err = install.RunWithContext(t.Context(), loadChart(t), vals)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
