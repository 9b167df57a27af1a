package sink

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
)

func TestDefaultConfigIsValid(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NATS.URL = ""
	cfg.ClickHouse.Addrs = []string{"clickhouse-0:9000", "no-port"}
	cfg.ClickHouse.Database = "surge; DROP"
	cfg.ClickHouse.InsertTimeout = 0
	cfg.ClickHouse.MaxInserts = 0
	cfg.ClickHouse.ShardServers = []int{0, 1, 5}
	cfg.Shards = 4
	cfg.Owned = []int{1, 1, 9}
	cfg.Retry.Initial = 0
	cfg.AckWait = 500 * time.Millisecond
	cfg.StallTimeout = 0
	cfg.Admin.Addr = "nonsense"

	err := cfg.Validate()
	require.Error(t, err)
	msg := err.Error()
	for _, want := range []string{
		"nats: url is required",
		`clickhouse: addrs: "no-port": want host:port`,
		`clickhouse: database must be an identifier, got "surge; DROP"`,
		"clickhouse: insert_timeout must be at least 1s",
		"clickhouse: max_inserts must be at least 1, got 0",
		"clickhouse: shard_servers must name a server for each of the 4 shards, got 3",
		"clickhouse: shard_servers: shard 2 maps to server 5, not in [0, 2)",
		"retry: initial must be positive",
		"ack_wait must be at least 1s (the keepalive runs every ack_wait/3), got 500ms",
		"stall_timeout must be positive, got 0s",
		"admin: addr:",
		"owned_shards: shard 1 is listed twice",
		"owned_shards: shard 9 is not in [0, 4)",
	} {
		require.Contains(t, msg, want)
	}
	require.Len(t, strings.Split(msg, "\n"), 13, msg)
}

func TestConfigFromEnvironment(t *testing.T) {
	cfg := DefaultConfig()
	env := map[string]string{
		"SURGE_CLICKHOUSE_ADDRS":          "127.0.0.1:9001, 127.0.0.1:9002",
		"SURGE_CLICKHOUSE_DATABASE":       "events_test",
		"SURGE_CLICKHOUSE_INSERT_TIMEOUT": "10s",
		"SURGE_CLICKHOUSE_MAX_INSERTS":    "2",
		"SURGE_CLICKHOUSE_SHARD_SERVERS":  "1,1,0,0",
		"SURGE_SHARDS":                    "4",
		"SURGE_OWNED_SHARDS":              "2,3",
		"SURGE_RETRY_MAX":                 "2s",
		"SURGE_ACK_WAIT":                  "3s",
		"SURGE_STALL_TIMEOUT":             "1m",
		"SURGE_ADMIN_ADDR":                "127.0.0.1:0",
	}
	require.NoError(t, config.ApplyEnv(&cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	require.NoError(t, cfg.Validate())
	require.Equal(t, []string{"127.0.0.1:9001", "127.0.0.1:9002"}, cfg.ClickHouse.Addrs)
	require.Equal(t, "events_test", cfg.ClickHouse.Database)
	require.Equal(t, 10*time.Second, cfg.ClickHouse.InsertTimeout)
	require.Equal(t, 2, cfg.ClickHouse.MaxInserts)
	require.Equal(t, []int{2, 3}, cfg.OwnedShards())
	require.Equal(t, 1, cfg.ServerOf(0))
	require.Equal(t, 0, cfg.ServerOf(3))
	require.Equal(t, 3*time.Second, cfg.AckWait)
	require.Equal(t, time.Second, cfg.KeepaliveEvery())
	require.Equal(t, time.Minute, cfg.StallTimeout)

	cfg.ClickHouse.ShardServers = nil
	require.Equal(t, 1, cfg.ServerOf(3), "default is k mod M")
	cfg.Owned = nil
	require.Equal(t, []int{0, 1, 2, 3}, cfg.OwnedShards(), "default owns every shard")
}

func TestConfigFromYAML(t *testing.T) {
	file := filepath.Join(t.TempDir(), "sink.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`
shards: 4
owned_shards: [1, 3]
clickhouse:
  insert_timeout: 10s
retry:
  initial: 50ms
  max: 2s
  multiplier: 1.5
  randomization_factor: 0.1
ack_wait: 2s
stall_timeout: 45s
`), 0o600))
	cfg := DefaultConfig()
	_, err := config.Load("sink", []string{"--config", file}, &cfg, io.Discard)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, 4, cfg.Shards)
	require.Equal(t, []int{1, 3}, cfg.OwnedShards())
	require.Equal(t, retry.Config{Initial: 50 * time.Millisecond, Max: 2 * time.Second, Multiplier: 1.5, RandomizationFactor: 0.1}, cfg.Retry)
	require.Equal(t, 2*time.Second, cfg.AckWait)
	require.Equal(t, 45*time.Second, cfg.StallTimeout)
}

// TestConfigLiveness: a short ack wait, whatever the insert timeout and
// the retry waits (the keepalive covers those), and a stall timeout.
func TestConfigLiveness(t *testing.T) {
	cfg := DefaultConfig()
	require.Equal(t, 5*time.Second, cfg.AckWait, "a crashed sink's batch comes back within seconds")
	require.Equal(t, 30*time.Second, cfg.StallTimeout)

	cfg.ClickHouse.InsertTimeout = 2 * time.Minute
	cfg.Retry = retry.DefaultConfig(time.Minute)
	cfg.AckWait = time.Second
	require.NoError(t, cfg.Validate(), "inserts and waits longer than ack_wait are fine")
	require.Equal(t, time.Second/3, cfg.KeepaliveEvery())

	cfg.AckWait = time.Second - time.Millisecond
	require.EqualError(t, cfg.Validate(), "ack_wait must be at least 1s (the keepalive runs every ack_wait/3), got 999ms")
	cfg.AckWait = 0
	require.EqualError(t, cfg.Validate(), "ack_wait must be at least 1s (the keepalive runs every ack_wait/3), got 0s")
	cfg.AckWait = 5 * time.Second
	cfg.StallTimeout = -time.Second
	require.EqualError(t, cfg.Validate(), "stall_timeout must be positive, got -1s")
}

func TestConsumerConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AckWait = 7 * time.Second
	got := cfg.ConsumerConfig(3)
	require.Equal(t, "sink-shard-3", got.Durable)
	require.Equal(t, "batches.shard.3", got.FilterSubject)
	require.Equal(t, 1, got.MaxAckPending, "one batch in flight keeps inserts in order")
	require.Equal(t, 7*time.Second, got.AckWait)
	require.Equal(t, -1, got.MaxDeliver)
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Class
	}{
		{"corrupt batch", fmt.Errorf("decode: %w", batch.ErrCorrupt), Permanent},
		{"batch of another shard", fmt.Errorf("%w: 3 on batches.shard.1", errWrongShard), Permanent},
		{"type mismatch", &clickhouse.Exception{Code: 53, Message: "Type mismatch"}, Permanent},
		{"cannot parse datetime", fmt.Errorf("insert: %w", &clickhouse.Exception{Code: 41}), Permanent},
		{"value out of range", &clickhouse.Exception{Code: 321}, Permanent},
		{"datetime overflow in the driver", fmt.Errorf("append column ts: %w", &column.DateOverflowError{}), Permanent},
		{"unsupported conversion in the driver", &column.ColumnConverterError{Op: "Append", From: "int", To: "String"}, Permanent},
		{"too many parts", &clickhouse.Exception{Code: 252, Message: "Too many parts"}, Transient},
		{"memory limit", &clickhouse.Exception{Code: 241}, Transient},
		{"timeout exceeded", &clickhouse.Exception{Code: 159}, Transient},
		{"unknown table", &clickhouse.Exception{Code: 60}, Transient},
		// A replica that has not applied an ALTER yet, or a column dropped
		// by hand: the sink reads the columns again and adds them.
		{"no such column", fmt.Errorf("send: %w", &clickhouse.Exception{Code: 16, Message: "No such column p_x in table surge.events_local"}), Transient},
		{"unknown identifier", &clickhouse.Exception{Code: 47, Message: "Unknown identifier: p_x"}, Transient},
		{"readonly", &clickhouse.Exception{Code: 242}, Transient},
		{"connection refused", errors.New("dial tcp 127.0.0.1:9000: connect: connection refused"), Transient},
		{"eof", fmt.Errorf("send: %w", io.EOF), Transient},
		{"deadline", fmt.Errorf("insert: %w", errDeadline{}), Transient},
		{"nil", nil, Transient},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Classify(tc.err))
		})
	}
}

type errDeadline struct{}

func (errDeadline) Error() string   { return "i/o timeout" }
func (errDeadline) Timeout() bool   { return true }
func (errDeadline) Temporary() bool { return true }

func TestSchemaStatementsMatchContract(t *testing.T) {
	stmts := SchemaStatements("surge", "events_cluster")
	require.Equal(t, []string{
		"CREATE DATABASE IF NOT EXISTS surge",
		`CREATE TABLE IF NOT EXISTS surge.events_local (
  event_id String,
  tenant String,
  user_id String,
  type String,
  ts DateTime('UTC'),
  received_at DateTime('UTC'),
  properties String,
  shard UInt16,
  seq UInt64,
  _conflicts String DEFAULT '',
  _unpromoted Array(String)
) ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(ts) ORDER BY (tenant, type, ts, event_id)`,
		`CREATE TABLE IF NOT EXISTS surge.events AS surge.events_local
  ENGINE = Distributed(events_cluster, surge, events_local, shard)`,
	}, stmts)
	require.Equal(t, "INSERT INTO surge.events_local (event_id, tenant, user_id, type, ts, received_at, properties, shard, seq, _conflicts, _unpromoted)", InsertQuery("surge"))
	require.Equal(t, "INSERT INTO surge.events_local (event_id, tenant, user_id, type, ts, received_at, properties, shard, seq, _conflicts, _unpromoted, p_n, p_plan)",
		InsertQuery("surge", "p_n", "p_plan"))
	require.Equal(t, "SELECT DISTINCT seq FROM surge.events_local WHERE shard = ? AND seq >= ? AND seq <= ? AND (tenant, type, ts, event_id) IN (SELECT tenant, type, ts, event_id FROM presence_keys)", PresenceQuery("surge"))
}

func TestQueryID(t *testing.T) {
	require.Equal(t, "surge-sink-3:10-20-1", queryID("3:10-20", trace.SpanContext{}, 1))
	sampled := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0x0b},
		SpanID:     trace.SpanID{1},
		TraceFlags: trace.FlagsSampled,
	})
	require.Equal(t, "surge-sink-3:10-20-0a0b0000000000000000000000000000-2", queryID("3:10-20", sampled, 2))
}

func TestNewRejectsMissingDeps(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Admin.Addr = "127.0.0.1:0"
	_, err := New(cfg, service.Deps{})
	require.ErrorContains(t, err, "logger is required")
	require.ErrorContains(t, err, "registry is required")
	require.ErrorContains(t, err, "tracer provider is required")
}

func TestZooKeeperColumns(t *testing.T) {
	list := "columns format version: 1\n4 columns:\n`event_id` String\n`ts` DateTime('UTC')\n`_unpromoted` Array(String)\n`p_g5` Nullable(Int64)\n"
	require.Equal(t, []string{"event_id", "ts", "_unpromoted", "p_g5"}, zooKeeperColumns(list))
	require.Empty(t, zooKeeperColumns(""))
}

// TestPresenceTableLeavesOutWhatNoDateTimeHolds: the external table of a
// presence query holds the rows' sorting keys, in order, but for a row
// whose ts is out of DateTime's range, which cannot be in the table.
func TestPresenceTableLeavesOutWhatNoDateTimeHolds(t *testing.T) {
	at := time.Date(2026, 12, 7, 6, 0, 0, 123_456_000, time.UTC)
	b := &batch.Batch{
		Tenant:  []string{"t1", "t1", "t2", "t2"},
		Type:    []string{"click", "view", "click", "view"},
		EventID: []string{"a", "b", "c", "d"},
		TS: []int64{at.UnixMicro(), time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro(),
			at.Add(time.Second).UnixMicro(), time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()},
	}
	keys, n, err := presenceTable(b, 0, 4)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Equal(t, PresenceKeys, keys.Name())
	require.Equal(t, "tenant String, type String, ts DateTime('UTC'), event_id String", keys.Structure())
	block := keys.Block()
	require.Equal(t, 2, block.Rows())
	var rows [][]any
	for r := range block.Rows() {
		var row []any
		for _, c := range block.Columns {
			row = append(row, c.Row(r, false))
		}
		rows = append(rows, row)
	}
	require.Equal(t, [][]any{
		{"t1", "click", at.Truncate(time.Second), "a"},
		{"t2", "click", at.Add(time.Second).Truncate(time.Second), "c"},
	}, rows)

	// Rows from..to only.
	_, n, err = presenceTable(b, 2, 3)
	require.NoError(t, err)
	require.Equal(t, 1, n)
}
