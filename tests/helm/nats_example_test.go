package helm

// The NATS the Surge chart expects: the official NATS Helm chart
// (testdata/nats, vendored at a pinned release, see testdata/README.md)
// installed as release "nats" with deployments/helm/examples/nats-values.yaml,
// as docs/scaling.md ("On Kubernetes") says. Rendered here with Helm's Go
// SDK, every object decoded strictly into its Kubernetes type, and the
// nats.conf it renders loaded by nats-server's own config parser, then run
// (one node, without its routes) to log in as Surge does.

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

const (
	examplesDir = "../../deployments/helm/examples"
	// natsChartDir is the official NATS chart, vendored.
	natsChartDir = "testdata/nats"
	// natsChartVersion is the release of it vendored (testdata/README.md).
	natsChartVersion = "2.14.2"
	// natsRelease is the release name docs/scaling.md installs it under.
	natsRelease = "nats"
	// natsReplicas is the size of the example's cluster.
	natsReplicas = 3
)

// natsObjects is what the NATS chart made, by kind and name.
type natsObjects struct {
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	pdbs         map[string]*policyv1.PodDisruptionBudget
	pods         map[string]*corev1.Pod
}

// splitManifest splits a rendered manifest into its documents.
func splitManifest(manifest string) []string {
	var docs []string
	for _, doc := range strings.Split(manifest, "\n---\n") {
		doc = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(doc), "---"))
		if doc != "" {
			docs = append(docs, doc)
		}
	}
	return docs
}

// renderNATS renders the vendored NATS chart with the example values.
func renderNATS(t *testing.T) *natsObjects {
	t.Helper()
	ch, err := loader.Load(natsChartDir)
	require.NoError(t, err)
	require.Equal(t, "nats", ch.Metadata.Name)
	require.Equal(t, natsChartVersion, ch.Metadata.Version)
	vals, err := common.ReadValuesFile(filepath.Join(examplesDir, "nats-values.yaml"))
	require.NoError(t, err)
	rel := renderRelease(t, ch, natsRelease, vals)

	o := &natsObjects{
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		services: map[string]*corev1.Service{}, deployments: map[string]*appsv1.Deployment{},
		statefulSets: map[string]*appsv1.StatefulSet{}, pdbs: map[string]*policyv1.PodDisruptionBudget{},
		pods: map[string]*corev1.Pod{},
	}
	docs := splitManifest(rel.Manifest)
	// The chart's `helm test` hook (a request-reply Pod) is decoded too.
	for _, h := range rel.Hooks {
		docs = append(docs, splitManifest(h.Manifest)...)
	}
	for _, doc := range docs {
		var head metav1.TypeMeta
		require.NoError(t, yaml.Unmarshal([]byte(doc), &head))
		b := []byte(doc)
		switch head.APIVersion + " " + head.Kind {
		case "v1 ConfigMap":
			decodeStrict(t, b, o.configMaps)
		case "v1 Secret":
			decodeStrict(t, b, o.secrets)
		case "v1 Service":
			decodeStrict(t, b, o.services)
		case "v1 Pod":
			decodeStrict(t, b, o.pods)
		case "apps/v1 Deployment":
			decodeStrict(t, b, o.deployments)
		case "apps/v1 StatefulSet":
			decodeStrict(t, b, o.statefulSets)
		case "policy/v1 PodDisruptionBudget":
			decodeStrict(t, b, o.pdbs)
		default:
			require.Failf(t, "unexpected object", "%s %s:\n%s", head.APIVersion, head.Kind, doc)
		}
	}
	return o
}

// servicePort is the port of svc numbered port, checked to reach a
// container port of the same number in pod (by name or number).
func servicePort(t *testing.T, svc *corev1.Service, pod corev1.PodSpec, port int32) corev1.ServicePort {
	t.Helper()
	for _, p := range svc.Spec.Ports {
		if p.Port != port {
			continue
		}
		for _, c := range pod.Containers {
			for _, cp := range c.Ports {
				if (p.TargetPort.StrVal != "" && cp.Name == p.TargetPort.StrVal) || (p.TargetPort.StrVal == "" && cp.ContainerPort == p.TargetPort.IntVal) {
					require.Equal(t, port, cp.ContainerPort, "Service %s port %d reaches container port %s %d", svc.Name, port, cp.Name, cp.ContainerPort)
					return p
				}
			}
		}
		require.Failf(t, "Service port reaches no container port", "Service %s port %d targets %s", svc.Name, port, p.TargetPort.String())
	}
	require.Failf(t, "no such Service port", "Service %s has no port %d", svc.Name, port)
	return corev1.ServicePort{}
}

// podHosts is the DNS name of each pod of the StatefulSet, through its
// governing headless Service: <statefulset>-<ordinal>.<service>, in the
// release's namespace (Kubernetes' StatefulSet stable network identity).
func podHosts(t *testing.T, o *natsObjects, sts *appsv1.StatefulSet) (map[string]int, *corev1.Service) {
	t.Helper()
	headless, ok := o.services[sts.Spec.ServiceName]
	require.True(t, ok, "StatefulSet %s names Service %s, which the chart does not make", sts.Name, sts.Spec.ServiceName)
	require.Equal(t, corev1.ClusterIPNone, headless.Spec.ClusterIP, "Service %s is not headless: no per-pod DNS names", headless.Name)
	require.True(t, labels.SelectorFromSet(headless.Spec.Selector).Matches(labels.Set(sts.Spec.Template.Labels)),
		"Service %s does not select the pods of StatefulSet %s", headless.Name, sts.Name)
	hosts := map[string]int{}
	for i := range int(*sts.Spec.Replicas) {
		hosts[fmt.Sprintf("%s-%d.%s", sts.Name, i, headless.Name)] = i
	}
	return hosts, headless
}

// natsContainer is the nats-server container of the StatefulSet.
func natsContainer(t *testing.T, sts *appsv1.StatefulSet) corev1.Container {
	t.Helper()
	i := slices.IndexFunc(sts.Spec.Template.Spec.Containers, func(c corev1.Container) bool { return c.Name == "nats" })
	require.GreaterOrEqual(t, i, 0, "no nats container in StatefulSet %s", sts.Name)
	return sts.Spec.Template.Spec.Containers[i]
}

// podEnv is the environment the nats container of pod ordinal gets, as
// the kubelet makes it: field references resolved for that pod, $(VAR)
// expanded, secret keys read from secrets (by Secret name and key).
func podEnv(t *testing.T, sts *appsv1.StatefulSet, ordinal int, secrets map[string]map[string]string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range natsContainer(t, sts).Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = os.Expand(strings.NewReplacer("$(", "${", ")", "}").Replace(e.Value), func(k string) string {
				v, ok := env[k]
				require.True(t, ok, "%s refers to %s, not set before it", e.Name, k)
				return v
			})
		case e.ValueFrom.FieldRef != nil:
			require.Equal(t, "metadata.name", e.ValueFrom.FieldRef.FieldPath, e.Name)
			env[e.Name] = fmt.Sprintf("%s-%d", sts.Name, ordinal)
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			data, ok := secrets[ref.Name]
			require.True(t, ok, "%s reads Secret %s, which the Surge chart does not make", e.Name, ref.Name)
			v, ok := data[ref.Key]
			require.True(t, ok, "%s reads key %s of Secret %s, which it does not hold", e.Name, ref.Key, ref.Name)
			env[e.Name] = v
		default:
			require.Failf(t, "unexpected env source", "%s: %+v", e.Name, e.ValueFrom)
		}
	}
	return env
}

// natsOptions loads the nats.conf the chart renders with nats-server's
// own config parser, in the environment of pod ordinal.
func natsOptions(t *testing.T, o *natsObjects, sts *appsv1.StatefulSet, ordinal int, env map[string]string) *server.Options {
	t.Helper()
	cm, ok := o.configMaps[natsRelease+"-config"]
	require.True(t, ok, "no ConfigMap %s-config", natsRelease)
	conf, ok := cm.Data["nats.conf"]
	require.True(t, ok, "ConfigMap %s has no nats.conf", cm.Name)
	// The container runs nats-server --config /etc/nats-config/nats.conf,
	// that file mounted from this ConfigMap.
	c := natsContainer(t, sts)
	require.Equal(t, []string{"--config", "/etc/nats-config/nats.conf"}, c.Args)
	mount := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/etc/nats-config" })
	require.GreaterOrEqual(t, mount, 0, "/etc/nats-config is not mounted")
	vol := slices.IndexFunc(sts.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == c.VolumeMounts[mount].Name })
	require.GreaterOrEqual(t, vol, 0, "no volume %s", c.VolumeMounts[mount].Name)
	require.NotNil(t, sts.Spec.Template.Spec.Volumes[vol].ConfigMap)
	require.Equal(t, cm.Name, sts.Spec.Template.Spec.Volumes[vol].ConfigMap.Name)

	path := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(path)
	require.NoError(t, err, "nats-server refuses the chart's nats.conf (pod %d):\n%s", ordinal, conf)
	return opts
}

// surgeNATS is what the Surge chart tells the services and KEDA about NATS,
// rendered with the production value set (autoscaling on, so KEDA's
// triggers are there) and the chart's default addresses.
type surgeNATS struct {
	urls               []string
	user, account      string
	monitoringEndpoint string
	secrets            map[string]map[string]string
}

func surgeNATSSettings(t *testing.T) surgeNATS {
	t.Helper()
	r := render(t, valuesOf(t, "production-values.yaml"))
	cm, ok := r.configMaps[releaseName]
	require.True(t, ok, "no ConfigMap %s", releaseName)
	s := surgeNATS{
		urls:    strings.Split(cm.Data["SURGE_NATS_URL"], ","),
		user:    cm.Data["SURGE_NATS_USER"],
		secrets: map[string]map[string]string{},
	}
	for name, sec := range r.secrets {
		s.secrets[name] = sec.StringData
	}
	for _, so := range r.scaledObjects {
		for _, tr := range so.Spec.Triggers {
			if tr.Type != "nats-jetstream" {
				continue
			}
			if s.monitoringEndpoint == "" {
				s.monitoringEndpoint, s.account = tr.Metadata["natsServerMonitoringEndpoint"], tr.Metadata["account"]
			}
			require.Equal(t, s.monitoringEndpoint, tr.Metadata["natsServerMonitoringEndpoint"])
			require.Equal(t, s.account, tr.Metadata["account"])
		}
	}
	require.NotEmpty(t, s.monitoringEndpoint, "no nats-jetstream trigger rendered")
	return s
}

func TestNATSExample(t *testing.T) {
	o := renderNATS(t)
	surge := surgeNATSSettings(t)

	// One StatefulSet of 3 pods, its JetStream store on a volume per pod.
	require.Len(t, o.statefulSets, 1)
	sts, ok := o.statefulSets[natsRelease]
	require.True(t, ok, "no StatefulSet %s", natsRelease)
	require.NotNil(t, sts.Spec.Replicas)
	require.Equal(t, int32(natsReplicas), *sts.Spec.Replicas)
	require.Len(t, sts.Spec.VolumeClaimTemplates, 1)
	pvc := sts.Spec.VolumeClaimTemplates[0]
	require.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, pvc.Spec.AccessModes)
	require.Equal(t, "50Gi", pvc.Spec.Resources.Requests.Storage().String())
	c := natsContainer(t, sts)
	dataMount := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == pvc.Name })
	require.GreaterOrEqual(t, dataMount, 0, "the JetStream volume %s is not mounted", pvc.Name)

	// The Surge chart's NATS URLs are the client port of the pods' DNS
	// names through the headless Service, one per pod.
	hosts, headless := podHosts(t, o, sts)
	require.Equal(t, natsRelease+"-headless", headless.Name)
	require.True(t, headless.Spec.PublishNotReadyAddresses, "pods must resolve before they are ready: they find their routes by these names")
	require.Len(t, surge.urls, natsReplicas)
	seen := map[int]bool{}
	for _, raw := range surge.urls {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		require.Equal(t, "nats", u.Scheme, raw)
		ordinal, ok := hosts[u.Hostname()]
		require.True(t, ok, "Surge's NATS URL %s names no pod of the NATS chart (its pods: %v)", raw, hosts)
		seen[ordinal] = true
		port, err := strconv.Atoi(u.Port())
		require.NoError(t, err, raw)
		require.Equal(t, "nats", servicePort(t, headless, sts.Spec.Template.Spec, int32(port)).Name, raw)
	}
	require.Len(t, seen, natsReplicas, "Surge's URLs name every pod once")

	// The client Service (for clients that take one address) on 4222.
	client, ok := o.services[natsRelease]
	require.True(t, ok, "no client Service %s", natsRelease)
	// No type and no clusterIP: the API server makes it a ClusterIP Service.
	require.Empty(t, client.Spec.Type)
	require.Empty(t, client.Spec.ClusterIP)
	require.True(t, labels.SelectorFromSet(client.Spec.Selector).Matches(labels.Set(sts.Spec.Template.Labels)))
	require.Equal(t, "nats", servicePort(t, client, sts.Spec.Template.Spec, 4222).Name)

	// KEDA's NATS JetStream scaler reads <endpoint>/jsz, then each node's
	// own monitoring port at <node>.<endpoint>, the node being the first
	// label of a route URL (the nodes do not advertise client URLs, see
	// no_advertise below; keda pkg/scalers/nats_jetstream_scaler.go,
	// getNATSJetStreamMonitoringNodeURLByNode).
	monHost, monPortS, err := net.SplitHostPort(surge.monitoringEndpoint)
	require.NoError(t, err)
	require.Equal(t, headless.Name, monHost, "KEDA's monitoring endpoint must be the headless Service: <pod>.<endpoint> is a pod's name under it")
	monPort, err := strconv.Atoi(monPortS)
	require.NoError(t, err)
	require.Equal(t, "monitor", servicePort(t, headless, sts.Spec.Template.Spec, int32(monPort)).Name)

	// nats.conf, as each pod loads it: JetStream on file storage on the
	// volume, the 3 nodes' routes, Surge's account and login.
	for ordinal := range natsReplicas {
		env := podEnv(t, sts, ordinal, surge.secrets)
		opts := natsOptions(t, o, sts, ordinal, env)
		pod := fmt.Sprintf("%s-%d", sts.Name, ordinal)
		require.Equal(t, pod, opts.ServerName)
		require.Equal(t, 4222, opts.Port)
		require.Equal(t, 8222, opts.HTTPPort)
		require.True(t, opts.JetStream, "JetStream off")
		require.Equal(t, c.VolumeMounts[dataMount].MountPath, opts.StoreDir, "the JetStream store is not on the volume")
		require.Equal(t, int64(50)<<30, opts.JetStreamMaxStore)
		// Every Surge stream and bucket is on file storage.
		require.Equal(t, int64(0), opts.JetStreamMaxMemory)
		require.Equal(t, int32(16)<<20, opts.MaxPayload, "Surge's batches go up to 8 MiB")

		require.Equal(t, natsRelease, opts.Cluster.Name)
		require.Equal(t, 6222, opts.Cluster.Port)
		require.True(t, opts.Cluster.NoAdvertise)
		var routes []string
		for _, r := range opts.Routes {
			routes = append(routes, r.String())
			require.Equal(t, "nats", r.Scheme)
			_, isPod := hosts[r.Hostname()]
			require.True(t, isPod, "route %s names no pod", r)
			require.Equal(t, "6222", r.Port())
			require.Equal(t, "cluster", servicePort(t, headless, sts.Spec.Template.Spec, 6222).Name)
		}
		require.Equal(t, []string{
			"nats://nats-0.nats-headless:6222", "nats://nats-1.nats-headless:6222", "nats://nats-2.nats-headless:6222",
		}, routes)

		// Surge's login: user surge in account SURGE, password from the
		// Surge chart's Secret.
		i := slices.IndexFunc(opts.Users, func(u *server.User) bool { return u.Username == surge.user })
		require.GreaterOrEqual(t, i, 0, "no NATS user %q (the Surge chart's nats.user)", surge.user)
		u := opts.Users[i]
		require.Len(t, opts.Users, 1)
		require.Empty(t, opts.Nkeys)
		require.NotNil(t, u.Account)
		require.Equal(t, surge.account, u.Account.Name, "the Surge chart's nats.account (KEDA's account)")
		require.Equal(t, surge.secrets[releaseName]["nats-password"], u.Password)
		require.NotEmpty(t, u.Password)
	}

	// The rest of what the chart makes, by name.
	require.Equal(t, []string{"nats", "nats-headless"}, sortedKeys(o.services))
	require.Equal(t, []string{"nats-config"}, sortedKeys(o.configMaps))
	require.Equal(t, []string{"nats"}, sortedKeys(o.pdbs))
	require.True(t, labels.SelectorFromSet(o.pdbs["nats"].Spec.Selector.MatchLabels).Matches(labels.Set(sts.Spec.Template.Labels)))

	runNATSNode(t, o, sts, surge)
}

// runNATSNode starts nats-server with pod 0's configuration (its routes
// and cluster dropped, its store in a temporary folder, random ports) and
// does what Surge's services need of it: log in as Surge does, use
// JetStream in the account, publish a message of 8 MiB into a file stream.
func runNATSNode(t *testing.T, o *natsObjects, sts *appsv1.StatefulSet, surge surgeNATS) {
	t.Helper()
	opts := natsOptions(t, o, sts, 0, podEnv(t, sts, 0, surge.secrets))
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.StoreDir = t.TempDir()
	opts.PidFile = ""
	opts.NoSigs, opts.NoLog = true, true
	srv, err := server.NewServer(opts)
	require.NoError(t, err)
	srv.Start()
	t.Cleanup(srv.Shutdown)
	require.True(t, srv.ReadyForConnections(10*time.Second))

	_, err = nats.Connect(srv.ClientURL(), nats.UserInfo(surge.user, "wrong"))
	require.Error(t, err, "a wrong password logs in")
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(surge.user, surge.secrets[releaseName]["nats-password"]))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := t.Context()
	_, err = js.AccountInfo(ctx)
	require.NoError(t, err, "JetStream in the account Surge logs in to")
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "CHECK", Subjects: []string{"check.>"}, Storage: jetstream.FileStorage})
	require.NoError(t, err)
	_, err = js.Publish(ctx, "check.batch", make([]byte, 8<<20))
	require.NoError(t, err, "a message of 8 MiB")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
