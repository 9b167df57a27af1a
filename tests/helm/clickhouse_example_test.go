package helm

// The ClickHouse the Surge chart expects: deployments/helm/examples/
// clickhouse.yaml, a ClickHouseKeeperInstallation and a
// ClickHouseInstallation for the Altinity ClickHouse operator. The
// operator's Go module is not on the module proxy here, so each object is
// checked as the API server checks a custom resource, against the
// OpenAPI schema of the operator's CRDs (vendored from its release, see
// testdata/README.md) with the API server's own code
// (k8s.io/apiextensions-apiserver): a field the schema does not know is
// refused (as kubectl's strict field validation does), and types, enums
// and required fields are validated. The names of the Services the
// operator will make are derived from its naming rules (cited below) and
// matched against the addresses the Surge chart uses.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apiextensionsinternal "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	k8sjson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

const (
	// operatorCRDDir holds the operator's CRDs, vendored.
	operatorCRDDir = "testdata/clickhouse-operator"
	// operatorVersion is the operator release they come from.
	operatorVersion = "0.25.6"

	// The operator's default ports (pkg/apis/clickhouse.altinity.com/v1/
	// type_host.go: ChDefaultTCPPortNumber, KpDefaultZKPortNumber).
	clickhouseNativePort = 9000
	keeperClientPort     = 2181
)

// crdSchema is one version's schema of a CRD, ready to check objects as
// the API server does.
type crdSchema struct {
	gvk        string // apiVersion + " " + kind
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
}

// loadCRD reads a vendored CRD (strictly, into its Go type) and prepares
// the schema of its one served version.
func loadCRD(t *testing.T, file string) crdSchema {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(operatorCRDDir, file))
	require.NoError(t, err)
	var crd apiextensionsv1.CustomResourceDefinition
	// Not strictly: the file overrides keys it merges in from YAML anchors
	// (<<: *TypeStringBool, then its own description), which strict
	// decoding takes for duplicates.
	require.NoError(t, yaml.Unmarshal(b, &crd), file)
	require.Equal(t, operatorVersion, crd.Labels[crd.Spec.Group+"/chop"], "%s: not the pinned operator release", file)
	require.Len(t, crd.Spec.Versions, 1, file)
	v := crd.Spec.Versions[0]
	require.True(t, v.Served, file)
	require.NotNil(t, v.Schema)
	var internal apiextensionsinternal.JSONSchemaProps
	require.NoError(t, apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil))
	s, err := structuralschema.NewStructural(&internal)
	require.NoError(t, err, "%s: schema not structural", file)
	validator, _, err := apiservervalidation.NewSchemaValidator(&internal)
	require.NoError(t, err, file)
	return crdSchema{gvk: crd.Spec.Group + "/" + v.Name + " " + crd.Spec.Names.Kind, structural: s, validator: validator}
}

// checkCustomResource checks one object against its CRD's schema as the
// API server would on create: unknown fields (which it would prune, and
// refuse under strict field validation), then the schema's validation.
func checkCustomResource(s crdSchema, doc []byte) (map[string]any, error) {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("YAML: %w", err)
	}
	var obj map[string]any
	if err := k8sjson.Unmarshal(j, &obj); err != nil {
		return nil, fmt.Errorf("JSON: %w", err)
	}
	if got := fmt.Sprintf("%v %v", obj["apiVersion"], obj["kind"]); got != s.gvk {
		return nil, fmt.Errorf("%s, want %s", got, s.gvk)
	}
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, fmt.Errorf("metadata.name %q: %s", name, strings.Join(errs, "; "))
	}
	pruned := pruning.PruneWithOptions(runtimeDeepCopy(obj), s.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	if len(pruned) > 0 {
		return nil, fmt.Errorf("unknown fields: %s", strings.Join(pruned, ", "))
	}
	if errs := apiservervalidation.ValidateCustomResource(field.NewPath(""), obj, s.validator); len(errs) > 0 {
		return nil, fmt.Errorf("invalid: %w", errs.ToAggregate())
	}
	return obj, nil
}

// runtimeDeepCopy copies a decoded JSON object (pruning edits in place).
func runtimeDeepCopy(obj map[string]any) map[string]any {
	b, err := k8sjson.Marshal(obj)
	if err != nil {
		panic(err)
	}
	var out map[string]any
	if err := k8sjson.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return out
}

// The parts of the two resources asserted on, read after the schema check.
type (
	clusterLayout struct {
		Name   string `json:"name"`
		Layout struct {
			ShardsCount   int `json:"shardsCount"`
			ReplicasCount int `json:"replicasCount"`
		} `json:"layout"`
	}
	volumeTemplates struct {
		Defaults struct {
			Templates struct {
				DataVolumeClaimTemplate string `json:"dataVolumeClaimTemplate"`
			} `json:"templates"`
		} `json:"defaults"`
		Templates struct {
			VolumeClaimTemplates []struct {
				Name string                           `json:"name"`
				Spec corev1.PersistentVolumeClaimSpec `json:"spec"`
			} `json:"volumeClaimTemplates"`
		} `json:"templates"`
	}
	keeperInstallation struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			Configuration struct {
				Clusters []clusterLayout `json:"clusters"`
			} `json:"configuration"`
			volumeTemplates
		} `json:"spec"`
	}
	clickhouseInstallation struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			Configuration struct {
				Zookeeper struct {
					Nodes []struct {
						Host string `json:"host"`
						Port int    `json:"port"`
					} `json:"nodes"`
				} `json:"zookeeper"`
				Users    map[string]any  `json:"users"`
				Clusters []clusterLayout `json:"clusters"`
			} `json:"configuration"`
			volumeTemplates
		} `json:"spec"`
	}
)

// The operator's names, from its release 0.25.6:
//   - a ClickHouse host's Service: "chi-{chi}-{cluster}-{host}"
//     (patternStatefulSetServiceName, pkg/model/chi/namer/patterns.go),
//     {host} being "{shard}-{replica}" and a shard's and replica's names
//     their indexes when the layout gives only counts (createHostName,
//     createShardName, createReplicaName in pkg/model/common/namer/name.go);
//     the CHI name cut to 60 characters, cluster, shard and replica names
//     to 15 (pkg/model/common/namer/short/const.go);
//   - a Keeper installation's Service: "keeper-{chk}" (patternCRServiceName,
//     pkg/model/chk/namer/patterns.go), headless, port "zk" 2181
//     (createServiceCR, pkg/model/chk/creator/service.go).
func chiHostService(chi, cluster string, shard, replica int) string {
	return fmt.Sprintf("chi-%s-%s-%d-%d", cut(chi, 60), cut(cluster, 15), shard, replica)
}

func chkService(chk string) string { return "keeper-" + cut(chk, 60) }

func cut(s string, n int) string { return s[:min(len(s), n)] }

// decodeInto re-decodes a checked object into the fields asserted on.
func decodeInto[T any](t *testing.T, obj map[string]any) T {
	t.Helper()
	b, err := k8sjson.Marshal(obj)
	require.NoError(t, err)
	var out T
	require.NoError(t, k8sjson.Unmarshal(b, &out))
	return out
}

// dataVolume is the size of the data volume the resource's defaults name.
func dataVolume(t *testing.T, v volumeTemplates) string {
	t.Helper()
	name := v.Defaults.Templates.DataVolumeClaimTemplate
	require.NotEmpty(t, name, "no data volume: the data would live in the container")
	for _, tpl := range v.Templates.VolumeClaimTemplates {
		if tpl.Name == name {
			require.Equal(t, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, tpl.Spec.AccessModes)
			return tpl.Spec.Resources.Requests.Storage().String()
		}
	}
	require.Failf(t, "no such volumeClaimTemplate", "%s", name)
	return ""
}

func TestClickHouseExample(t *testing.T) {
	chiCRD := loadCRD(t, "clickhouseinstallations.clickhouse.altinity.com.yaml")
	chkCRD := loadCRD(t, "clickhousekeeperinstallations.clickhouse-keeper.altinity.com.yaml")

	b, err := os.ReadFile(filepath.Join(examplesDir, "clickhouse.yaml"))
	require.NoError(t, err)
	docs := splitManifest(string(b))
	require.Len(t, docs, 2, "a ClickHouseKeeperInstallation and a ClickHouseInstallation")
	chkObj, err := checkCustomResource(chkCRD, []byte(docs[0]))
	require.NoError(t, err, "the ClickHouseKeeperInstallation")
	chiObj, err := checkCustomResource(chiCRD, []byte(docs[1]))
	require.NoError(t, err, "the ClickHouseInstallation")
	chk := decodeInto[keeperInstallation](t, chkObj)
	chi := decodeInto[clickhouseInstallation](t, chiObj)

	// Keeper: one cluster of 3 nodes (a quorum survives one), on volumes.
	require.Len(t, chk.Spec.Configuration.Clusters, 1)
	require.Equal(t, 3, chk.Spec.Configuration.Clusters[0].Layout.ReplicasCount)
	require.Equal(t, "10Gi", dataVolume(t, chk.Spec.volumeTemplates))

	// ClickHouse: one cluster of 2 shards x 2 replicas, on volumes, using
	// the Keeper installation's Service.
	require.Len(t, chi.Spec.Configuration.Clusters, 1)
	cluster := chi.Spec.Configuration.Clusters[0]
	require.Equal(t, 2, cluster.Layout.ShardsCount)
	require.Equal(t, 2, cluster.Layout.ReplicasCount)
	require.Equal(t, "100Gi", dataVolume(t, chi.Spec.volumeTemplates))
	require.Len(t, chi.Spec.Configuration.Zookeeper.Nodes, 1)
	zk := chi.Spec.Configuration.Zookeeper.Nodes[0]
	require.Equal(t, chkService(chk.Metadata.Name), zk.Host, "the Keeper Service the operator makes for %s", chk.Metadata.Name)
	require.Equal(t, keeperClientPort, zk.Port)

	// The Surge chart's sink: its shard addresses are the operator's host
	// Services, shard by shard in the cluster's order, on the native port;
	// its cluster name, login and password Secret are the example's.
	r := render(t, valuesOf(t, "production-values.yaml"))
	sink := r.deployment(t, "sink").Spec.Template.Spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range sink.Env {
		env[e.Name] = e
	}
	var want []string
	for shard := range cluster.Layout.ShardsCount {
		var replicas []string
		for replica := range cluster.Layout.ReplicasCount {
			replicas = append(replicas, fmt.Sprintf("%s:%d", chiHostService(chi.Metadata.Name, cluster.Name, shard, replica), clickhouseNativePort))
		}
		want = append(want, strings.Join(replicas, "|"))
	}
	require.Equal(t, []string{
		"chi-surge-events-0-0:9000|chi-surge-events-0-1:9000",
		"chi-surge-events-1-0:9000|chi-surge-events-1-1:9000",
	}, want)
	require.Equal(t, strings.Join(want, ","), env["SURGE_CLICKHOUSE_ADDRS"].Value)
	require.Equal(t, "true", env["SURGE_CLICKHOUSE_REPLICATED"].Value)
	require.Equal(t, cluster.Name, env["SURGE_CLICKHOUSE_CLUSTER"].Value)

	user := env["SURGE_CLICKHOUSE_USERNAME"].Value
	require.NotEmpty(t, user)
	// users: "<user>/<setting>"; k8s_secret_password is "<secret>/<key>"
	// in the installation's namespace (parseDataSourceAddress,
	// pkg/apis/clickhouse.altinity.com/v1/type_setting.go).
	ref, ok := chi.Spec.Configuration.Users[user+"/k8s_secret_password"].(string)
	require.True(t, ok, "no password for ClickHouse user %s (the Surge chart's clickhouse.username)", user)
	secret, key, ok := strings.Cut(ref, "/")
	require.True(t, ok, ref)
	sinkRef := env["SURGE_CLICKHOUSE_PASSWORD"].ValueFrom.SecretKeyRef
	require.NotNil(t, sinkRef)
	require.Equal(t, sinkRef.Name, secret, "ClickHouse reads the password from the Secret the sink reads it from")
	require.Equal(t, sinkRef.Key, key)
	require.Contains(t, r.secrets[secret].StringData, key)
	for k := range chi.Spec.Configuration.Users {
		require.True(t, strings.HasPrefix(k, user+"/"), "users: %s is not Surge's user", k)
	}
}

// The check refuses what the API server would: a misspelt field, a field
// out of place, a wrong type.
func TestClickHouseExampleCheckRefuses(t *testing.T) {
	chiCRD := loadCRD(t, "clickhouseinstallations.clickhouse.altinity.com.yaml")
	base := "apiVersion: clickhouse.altinity.com/v1\nkind: ClickHouseInstallation\nmetadata:\n  name: surge\nspec:\n"
	_, err := checkCustomResource(chiCRD, []byte(base+"  configuration:\n    clusters:\n      - name: events\n        layout:\n          shardsCount: 2\n"))
	require.NoError(t, err)
	for _, c := range []struct{ name, spec, want string }{
		{"misspelt", "  configuration:\n    zookeepr:\n      nodes: []\n", "unknown fields: spec.configuration.zookeepr"},
		{"out of place", "  shardsCount: 2\n", "unknown fields: spec.shardsCount"},
		{"wrong type", "  configuration:\n    clusters:\n      - name: events\n        layout:\n          shardsCount: [2]\n", "spec.configuration.clusters[0].layout.shardsCount"},
		{"enum", "  stop: perhaps\n", "spec.stop"},
	} {
		_, err := checkCustomResource(chiCRD, []byte(base+c.spec))
		require.ErrorContains(t, err, c.want, c.name)
	}
}
