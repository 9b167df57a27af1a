package chserver_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// httpClient keeps no idle connections, so no goroutine outlives a test.
var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// query runs one statement over the server's HTTP interface and returns
// the answer as text.
func query(t *testing.T, s *chserver.Server, sql string) string {
	t.Helper()
	resp, err := httpClient.Post("http://"+s.HTTPAddr()+"/", "text/plain", strings.NewReader(sql))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", sql, body)
	return strings.TrimSpace(string(body))
}

func startCluster(t *testing.T, n int) *chserver.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	c, err := chserver.StartCluster(ctx, t.TempDir(), n)
	require.NoError(t, err)
	t.Cleanup(c.Stop)
	return c
}

func TestStartCluster(t *testing.T) {
	c := startCluster(t, 2)
	require.Equal(t, chserver.DefaultCluster, c.Name)
	addrs := c.Addrs()
	require.Len(t, addrs, 2)
	require.NotEqual(t, addrs[0], addrs[1])

	for i, s := range c.Servers {
		require.Equal(t, addrs[i], s.Addr())
		require.NotZero(t, s.PID())
		require.Equal(t, "1", query(t, s, "SELECT 1"))
		// Each server sees the whole cluster in its configuration.
		require.Equal(t, "2", query(t, s, "SELECT count() FROM system.clusters WHERE cluster = '"+chserver.DefaultCluster+"'"))
	}
}

func TestDistributedTableCountsEveryServer(t *testing.T) {
	c := startCluster(t, 2)
	for i, s := range c.Servers {
		query(t, s, "CREATE TABLE default.t_local (shard UInt16, n UInt64) ENGINE = MergeTree() ORDER BY n")
		query(t, s, "CREATE TABLE default.t AS default.t_local ENGINE = Distributed("+c.Name+", default, t_local, shard)")
		// Server i holds i+1 rows, so each server's share shows in the total.
		var rows []string
		for n := 0; n <= i; n++ {
			rows = append(rows, fmt.Sprintf("(%d, %d)", i, n))
		}
		query(t, s, "INSERT INTO default.t_local VALUES "+strings.Join(rows, ", "))
	}
	for _, s := range c.Servers {
		require.Equal(t, "3", query(t, s, "SELECT count() FROM default.t"))
		require.Equal(t, "0\t1\n1\t2", query(t, s, "SELECT shard, count() FROM default.t GROUP BY shard ORDER BY shard"))
	}
}

func TestStopThenStartOnSameDir(t *testing.T) {
	c := startCluster(t, 2)
	s := c.Servers[1]
	query(t, s, "CREATE TABLE default.kept (n UInt64) ENGINE = MergeTree() ORDER BY n")
	query(t, s, "INSERT INTO default.kept VALUES (1), (2), (3)")

	require.NoError(t, s.Stop())
	require.Zero(t, s.PID())
	require.NoError(t, s.Stop(), "stop is idempotent")
	_, err := httpClient.Get("http://" + s.HTTPAddr() + "/")
	require.Error(t, err, "a stopped server does not answer")
	require.Equal(t, "1", query(t, c.Servers[0], "SELECT 1"), "the other server is unaffected")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, s.Start(ctx))
	require.NotZero(t, s.PID())
	require.Equal(t, "3", query(t, s, "SELECT count() FROM default.kept"), "data survives a restart")
}

func TestReplicatedCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	require.NoError(t, zookeeper.EnsureInstalled(ctx, t.Logf))
	zk, err := zookeeper.Start(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = zk.Stop() })
	c, err := chserver.Start(ctx, t.TempDir(), chserver.Options{Shards: 2, Replicas: 2, ZooKeeper: zk.Addr()})
	require.NoError(t, err)
	t.Cleanup(c.Stop)

	require.True(t, c.Replicated())
	require.Len(t, c.Servers, 4)
	require.Len(t, c.ReplicaAddrs(), 2)
	for shard, replicas := range c.Shards {
		require.Len(t, replicas, 2)
		for replica, s := range replicas {
			require.Equal(t, shard, s.Shard)
			require.Equal(t, replica, s.Replica)
			require.Equal(t, c.ReplicaAddrs()[shard][replica], s.Addr())
			require.Equal(t, fmt.Sprint(shard), query(t, s, "SELECT substitution FROM system.macros WHERE macro = 'shard'"))
			require.Equal(t, "2\t2", query(t, s, "SELECT uniqExact(shard_num), sum(replica_num = 2) FROM system.clusters WHERE cluster = '"+c.Name+"'"))
		}
	}

	// ON CLUSTER reaches every server through ZooKeeper's DDL queue.
	s00 := c.Shards[0][0]
	query(t, s00, "CREATE DATABASE IF NOT EXISTS r ON CLUSTER "+c.Name)
	query(t, s00, "CREATE TABLE IF NOT EXISTS r.t_local ON CLUSTER "+c.Name+
		" (shard UInt16, n UInt64) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/r/t_local', '{replica}') ORDER BY n")
	query(t, s00, "CREATE TABLE IF NOT EXISTS r.t ON CLUSTER "+c.Name+" AS r.t_local ENGINE = Distributed("+c.Name+", r, t_local, shard)")

	// Rows written to one replica reach the other; the Distributed table
	// counts each shard once.
	query(t, s00, "INSERT INTO r.t_local SELECT 0, number FROM system.numbers LIMIT 1000")
	query(t, c.Shards[1][1], "INSERT INTO r.t_local SELECT 1, number FROM system.numbers LIMIT 10")
	for _, s := range c.Servers {
		want := map[int]string{0: "1000", 1: "10"}[s.Shard]
		require.EventuallyWithT(t, func(ct *assert.CollectT) {
			got, err := chserver.Query(s.HTTPAddr(), "SELECT count() FROM r.t_local")
			assert.NoError(ct, err)
			assert.Equal(ct, want, got)
		}, 20*time.Second, 100*time.Millisecond, "replica %s", s.Addr())
	}
	for _, s := range c.Servers {
		require.Equal(t, "1010", query(t, s, "SELECT count() FROM r.t"))
	}
}
