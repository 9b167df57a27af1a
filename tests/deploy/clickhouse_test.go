package deploy

import (
	"encoding/xml"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/services/sink"
)

const (
	clusterXMLTarget = "/etc/clickhouse-server/config.d/cluster.xml"
	schemaDir        = "/docker-entrypoint-initdb.d"
)

// clickhouseXML is the part of a ClickHouse config file compose relies on.
type clickhouseXML struct {
	XMLName       xml.Name `xml:"clickhouse"`
	RemoteServers struct {
		Clusters []struct {
			XMLName xml.Name
			Shards  []struct {
				InternalReplication string `xml:"internal_replication"`
				Replicas            []struct {
					Host string `xml:"host"`
					Port string `xml:"port"`
				} `xml:"replica"`
			} `xml:"shard"`
		} `xml:",any"`
	} `xml:"remote_servers"`
	ZooKeeper struct {
		Nodes []struct {
			Host string `xml:"host"`
			Port string `xml:"port"`
		} `xml:"node"`
	} `xml:"zookeeper"`
	Macros struct {
		Shard   fromEnv `xml:"shard"`
		Replica fromEnv `xml:"replica"`
	} `xml:"macros"`
	InterserverHTTPHost fromEnv `xml:"interserver_http_host"`
}

// fromEnv is an element whose value ClickHouse takes from the variable
// named by its from_env attribute.
type fromEnv struct {
	Env   string `xml:"from_env,attr"`
	Value string `xml:",chardata"`
}

// fromEnvNames lists every from_env attribute of an XML document.
func fromEnvNames(t *testing.T, data []byte) []string {
	t.Helper()
	var names []string
	d := xml.NewDecoder(strings.NewReader(string(data)))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if el, ok := tok.(xml.StartElement); ok {
			for _, a := range el.Attr {
				if a.Name.Local == "from_env" {
					names = append(names, a.Value)
				}
			}
		}
	}
	return names
}

// TestComposeClickHouseCluster checks the replicated ClickHouse of compose
// against cluster.xml, schema.sql and the sink: 2 shards x 2 replicas, one
// compose service per replica, each told its shard and replica name, all on
// one ZooKeeper service, the schema created once for the whole cluster,
// and the sink writing each shard to a replica of that shard.
func TestComposeClickHouseCluster(t *testing.T) {
	p := loadProject(t, nil)
	var conf string
	for _, name := range clickhouseServers {
		src := bindSource(t, svc(t, p, name), clusterXMLTarget)
		if conf == "" {
			conf = src
		}
		require.Equal(t, conf, src, "every server reads the same cluster.xml")
	}
	data, err := os.ReadFile(conf)
	require.NoError(t, err)
	var cfg clickhouseXML
	require.NoError(t, xml.Unmarshal(data, &cfg))

	// The cluster: its name is the sink's, 2 shards of 2 replicas each, and
	// every replica is one compose service on the native port.
	require.Len(t, cfg.RemoteServers.Clusters, 1)
	cluster := cfg.RemoteServers.Clusters[0]
	sinkCfg := surgeConfig(t, p, "sink").(*sink.Config)
	require.Equal(t, sinkCfg.ClickHouse.Cluster, cluster.XMLName.Local, "the cluster the sink's Distributed table spans")
	require.Equal(t, schemaCluster, cluster.XMLName.Local, "the cluster schema.sql creates the tables on")
	require.Len(t, cluster.Shards, 2)
	shardOf := map[string]int{}
	var hosts []string
	for i, sh := range cluster.Shards {
		require.Equal(t, "true", sh.InternalReplication, "shard %d: the Distributed table writes one replica, replication the rest", i)
		require.Len(t, sh.Replicas, 2, "shard %d", i)
		for _, r := range sh.Replicas {
			require.Equal(t, "9000", r.Port, "%s: the native port", r.Host)
			require.NotContains(t, shardOf, r.Host, "%s is in two shards", r.Host)
			shardOf[r.Host] = i
			hosts = append(hosts, r.Host)
		}
	}
	require.Equal(t, clickhouseServers, hosts, "one compose service per replica, in cluster order")

	// Each server's place comes from its environment: every variable the
	// file reads is set on every server, SHARD is its shard's index in the
	// cluster and REPLICA its service name, which the others resolve.
	require.Equal(t, "SHARD", cfg.Macros.Shard.Env)
	require.Equal(t, "REPLICA", cfg.Macros.Replica.Env)
	require.Equal(t, "REPLICA", cfg.InterserverHTTPHost.Env, "replicas fetch parts from each other by service name")
	vars := fromEnvNames(t, data)
	require.ElementsMatch(t, []string{"SHARD", "REPLICA", "REPLICA"}, vars)
	for _, name := range clickhouseServers {
		s := svc(t, p, name)
		env := envOf(s)
		require.Equal(t, strconv.Itoa(shardOf[name]), env["SHARD"], name)
		require.Equal(t, name, env["REPLICA"], name)
		require.Equal(t, "1", env["CLICKHOUSE_SKIP_USER_SETUP"], "%s: the default user, as the sink logs in", name)
		require.Len(t, env, 3, "%s is given only what it reads", name)
		requireVolumeAt(t, s, "/var/lib/clickhouse")
	}

	// ZooKeeper: one compose service on its client port, waited for.
	require.Len(t, cfg.ZooKeeper.Nodes, 1)
	zk := cfg.ZooKeeper.Nodes[0]
	require.Equal(t, "2181", zk.Port)
	zs := svc(t, p, zk.Host)
	require.True(t, strings.HasPrefix(zs.Image, "zookeeper:3."), "%s runs ZooKeeper 3.x, got %s", zk.Host, zs.Image)
	require.Equal(t, []string{"CMD", "zkServer.sh", "status"}, []string(zs.HealthCheck.Test))
	require.Contains(t, strings.Split(envOf(zs)["ZOO_4LW_COMMANDS_WHITELIST"], ","), "srvr", "zkServer.sh status asks srvr")
	for _, name := range clickhouseServers {
		require.Equal(t, types.ServiceConditionHealthy, svc(t, p, name).DependsOn[zk.Host].Condition, name)
	}

	// The schema: exactly one server runs schema.sql at its first start,
	// and every server is healthy only once it holds both tables, so the
	// sink (which waits for all four) never creates them unreplicated.
	var initializers []string
	for _, name := range clickhouseServers {
		s := svc(t, p, name)
		for _, v := range s.Volumes {
			if strings.HasPrefix(v.Target, schemaDir+"/") {
				require.Equal(t, "schema.sql", filepath.Base(v.Source))
				initializers = append(initializers, name)
			}
		}
		require.Equal(t, []string{"CMD", "clickhouse-client", "-q",
			"SELECT throwIf(count() != 2) FROM system.tables WHERE database = '" + schemaDatabase + "' AND name IN ('events_local', 'events')"},
			[]string(s.HealthCheck.Test), "%s is healthy once it holds the schema", name)
	}
	require.Equal(t, []string{clickhouseServers[0]}, initializers, "one server creates the schema, ON CLUSTER, for all")

	// The sink: the database of the schema, and one entry per shard in
	// cluster order listing exactly that shard's replicas, replicated.
	require.Equal(t, schemaDatabase, sinkCfg.ClickHouse.Database)
	require.True(t, sinkCfg.ClickHouse.Replicated, "the sink writes replicated tables")
	require.Empty(t, sinkCfg.ClickHouse.ShardServers, "shard k goes to server k mod servers")
	require.Len(t, sinkCfg.ClickHouse.Addrs, len(cluster.Shards), "one entry per shard")
	for i, entry := range sinkCfg.ClickHouse.Addrs {
		var hosts []string
		for _, addr := range strings.Split(entry, "|") {
			host, port, err := net.SplitHostPort(addr)
			require.NoError(t, err)
			require.Equal(t, "9000", port)
			require.Contains(t, shardOf, host, "the sink writes to %s, not in the cluster", addr)
			require.Equal(t, i, shardOf[host], "the sink's entry %d (%s) lists a replica of shard %d", i, addr, i)
			hosts = append(hosts, host)
		}
		var want []string
		for host, k := range shardOf {
			if k == i {
				want = append(want, host)
			}
		}
		require.ElementsMatch(t, want, hosts, "the sink's entry %d lists every replica of shard %d", i, i)
	}
	require.ElementsMatch(t, clickhouseServers, slices.Collect(maps.Keys(mapDeps(svc(t, p, "sink"), "clickhouse-"))),
		"the sink waits for every replica")
}

// mapDeps is the dependencies of s whose names start with prefix.
func mapDeps(s types.ServiceConfig, prefix string) map[string]types.ServiceDependency {
	out := map[string]types.ServiceDependency{}
	for k, v := range s.DependsOn {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}
