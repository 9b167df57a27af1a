package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/config"
)

func TestConfigReplicasFromEnvironment(t *testing.T) {
	cfg := DefaultConfig()
	env := map[string]string{
		"SURGE_CLICKHOUSE_ADDRS":      "ch-0a:9000|ch-0b:9000, ch-1a:9000 | ch-1b:9000",
		"SURGE_CLICKHOUSE_REPLICATED": "true",
	}
	require.NoError(t, config.ApplyEnv(&cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	require.NoError(t, cfg.Validate())
	require.True(t, cfg.ClickHouse.Replicated)
	require.Len(t, cfg.ClickHouse.Addrs, 2, "one entry per clickhouse shard")
	require.Equal(t, []string{"ch-0a:9000", "ch-0b:9000"}, Replicas(cfg.ClickHouse.Addrs[0]))
	require.Equal(t, []string{"ch-1a:9000", "ch-1b:9000"}, Replicas(cfg.ClickHouse.Addrs[1]))
	require.Equal(t, 1, cfg.ServerOf(3))
}

func TestConfigReplicasFromYAML(t *testing.T) {
	file := filepath.Join(t.TempDir(), "sink.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
clickhouse:
  replicated: true
  addrs:
    - ch-0a:9000|ch-0b:9000
    - ch-1a:9000|ch-1b:9000
`), 0o600))
	cfg := DefaultConfig()
	_, err := config.Load("sink", []string{"--config", file}, &cfg, io.Discard)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, []string{"ch-0a:9000|ch-0b:9000", "ch-1a:9000|ch-1b:9000"}, cfg.ClickHouse.Addrs)
}

func TestConfigReplicasNeedReplicated(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ClickHouse.Addrs = []string{"ch-0a:9000|ch-0b:9000", "ch-1a:9000|nope"}
	err := cfg.Validate()
	require.Error(t, err)
	msg := err.Error()
	require.Contains(t, msg, `clickhouse: addrs: "ch-0a:9000|ch-0b:9000" lists replicas: set replicated: true`)
	require.Contains(t, msg, `clickhouse: addrs: "ch-1a:9000|nope": replica "nope": want host:port`)

	cfg.ClickHouse.Replicated = true
	err = cfg.Validate()
	require.Error(t, err)
	require.Len(t, strings.Split(err.Error(), "\n"), 1, err.Error())

	cfg.ClickHouse.Addrs = []string{"ch-0:9000"}
	require.NoError(t, cfg.Validate(), "a replicated cluster may list one replica a shard")
}

func TestReplicatedSchemaStatements(t *testing.T) {
	stmts := ReplicatedSchemaStatements("surge", "events_cluster")
	require.Len(t, stmts, 3)
	require.Equal(t, "CREATE DATABASE IF NOT EXISTS surge ON CLUSTER events_cluster", stmts[0])
	require.Contains(t, stmts[1], "CREATE TABLE IF NOT EXISTS surge.events_local ON CLUSTER events_cluster (")
	require.Contains(t, stmts[1], "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/surge/events_local', '{replica}') PARTITION BY toYYYYMM(ts) ORDER BY (tenant, type, ts, event_id)")
	require.Equal(t, "CREATE TABLE IF NOT EXISTS surge.events ON CLUSTER events_cluster AS surge.events_local\n  ENGINE = Distributed(events_cluster, surge, events_local, shard)", stmts[2])
	// The columns are those of the single-server schema.
	single := SchemaStatements("surge", "events_cluster")[1]
	cols := single[strings.Index(single, "("):strings.Index(single, ") ENGINE")]
	require.Contains(t, stmts[1], cols)
}

// fakeReplicas is a server of n replicas without connections, for the
// failover choice.
func fakeReplicas(n int, replicated bool) *server {
	s := &server{replicated: replicated, current: map[int]int{}, floor: map[int]uint64{}}
	for i := range n {
		s.replicas = append(s.replicas, &replica{addr: "r" + string(rune('0'+i)) + ":9000"})
	}
	return s
}

func TestFailoverMovesTheShardToAnotherReplica(t *testing.T) {
	s := fakeReplicas(3, true)
	refused := errors.New("dial tcp r0:9000: connect: connection refused")

	i, r := s.use(0)
	require.Equal(t, 0, i)
	require.Equal(t, "r0:9000", r.addr)
	err := s.done(0, 0, refused)
	require.ErrorIs(t, err, refused)
	require.ErrorContains(t, err, "next attempt on replica r1:9000")
	i, _ = s.use(0)
	require.Equal(t, 1, i, "shard 0 moved")
	i, _ = s.use(2)
	require.Equal(t, 0, i, "other shards move on their own failures")

	// r1 fails too: r2 is next; then r2 fails: r0 failed longest ago.
	require.ErrorContains(t, s.done(0, 1, refused), "next attempt on replica r2:9000")
	require.ErrorContains(t, s.done(0, 2, refused), "next attempt on replica r0:9000")

	// Shard 2 fails on r0, which failed recently, as did r1 and r2: the
	// one that failed longest ago wins (r1).
	require.ErrorContains(t, s.done(2, 0, refused), "next attempt on replica r1:9000")

	// A stale report (the shard moved already) moves nothing.
	require.Equal(t, refused, s.done(2, 0, refused))
	i, _ = s.use(2)
	require.Equal(t, 1, i)

	// Success, failures about the batch and cancelled attempts keep the
	// replica.
	require.NoError(t, s.done(2, 1, nil))
	require.ErrorIs(t, s.done(2, 1, fmt.Errorf("insert: %w", context.Canceled)), context.Canceled)
	bad := &clickhouse.Exception{Code: 53, Message: "type mismatch"}
	require.Equal(t, error(bad), s.done(2, 1, bad))
	i, _ = s.use(2)
	require.Equal(t, 1, i)
}

func TestFailoverPrefersAReplicaThatHasNotFailedLately(t *testing.T) {
	s := fakeReplicas(3, true)
	s.replicas[1].failedAt.Store(time.Now().UnixNano())
	require.ErrorContains(t, s.done(0, 0, context.DeadlineExceeded), "next attempt on replica r2:9000")
}

func TestOneReplicaHasNoFailover(t *testing.T) {
	s := fakeReplicas(1, false)
	refused := errors.New("connection refused")
	require.Equal(t, refused, s.done(0, 0, refused))
	i, _ := s.use(0)
	require.Equal(t, 0, i)
}

func TestWatermarkFloorOnlyRises(t *testing.T) {
	s := fakeReplicas(2, true)
	require.Equal(t, uint64(10), s.raise(0, 10))
	require.Equal(t, uint64(10), s.raise(0, 4), "a lagging replica does not lower it")
	require.Equal(t, uint64(12), s.raise(0, 12))
	require.Equal(t, uint64(3), s.raise(1, 3), "per sink shard")

	single := fakeReplicas(1, false)
	single.raise(0, 10)
	require.Equal(t, uint64(4), single.raise(0, 4), "without replication the server's answer stands")
}
