package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/surgebin"
	"github.com/surge-events/surge/tools/stack"
	"github.com/surge-events/surge/tools/status"
)

// statusRun is one run of `surge status`.
type statusRun struct {
	code           int
	stdout, stderr string
	report         status.Report // when run with --json
}

// surgeStatus runs the built surge binary's status command in dir. It
// returns an error rather than fail the test, so EventuallyWithT
// conditions can call it.
func surgeStatus(ctx context.Context, bin, dir string, env []string, args ...string) (statusRun, error) {
	cmd := exec.CommandContext(ctx, bin, append([]string{"status"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	run := statusRun{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		run.code = exit.ExitCode()
	case err != nil:
		return run, err
	}
	for _, a := range args {
		if a == "--json" && run.code != 2 {
			if err := json.Unmarshal(stdout.Bytes(), &run.report); err != nil {
				return run, fmt.Errorf("status --json printed no report: %w; stderr: %s", err, run.stderr)
			}
		}
	}
	return run, nil
}

// TestStatusCommand runs `surge status` against a real local stack
// (stack.json, embedded NATS, two clickhouse-server processes, the four
// services) in each state an operator meets: healthy (exit 0, every shard
// owned, nothing waiting once the load drained, ClickHouse's exact row
// count per shard), dead letters waiting, lagging (a ClickHouse server
// stopped, so its shards' batches pile up in BATCHES: those shards and
// only those are named), stalled (the same, past the stall threshold: the
// shards named stalled and the sink not ready, saying which insert it
// waits on) and recovered once ClickHouse is back.
func TestStatusCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole stack")
	}
	const nShards = 4
	bin := surgebin.Build(t)

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{
		Dir: dir, Shards: nShards, ClickHouseServers: 2, NATSPort: -1,
		Policy: batch.Policy{MaxRows: 5000, MaxBytes: 8 << 20, MaxAge: 200 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Stop()) })
	require.NoError(t, stack.WriteInfo(dir, st.Info()))
	local := []string{"--dir", dir, "--interval", "300ms"}

	// want counts the rows each shard should hold.
	want := make([]uint64, nShards)
	post := func(prefix string, n int) {
		t.Helper()
		var b strings.Builder
		b.WriteByte('[')
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			user := fmt.Sprintf("%s-%d", prefix, i)
			want[shard.Of("default", user, nShards)]++
			fmt.Fprintf(&b, `{"event_id":"%s","user_id":"%s","type":"status"}`, user, user)
		}
		b.WriteByte(']')
		require.NoError(t, postEvents(t.Context(), st.IngestURL+"/v1/events", []byte(b.String()), n))
	}
	rowsOf := func(r status.Report) []uint64 {
		out := make([]uint64, len(r.Shards))
		for i, s := range r.Shards {
			if s.Rows != nil {
				out[i] = *s.Rows
			}
		}
		return out
	}

	// Healthy: the load drains and the report says so exactly.
	post("a", 2000)
	for _, n := range want {
		require.NotZero(t, n, "every shard gets rows")
	}
	var healthy statusRun
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		run, err := surgeStatus(t.Context(), bin, dir, nil, append(local, "--json")...)
		if assert.NoError(c, err) {
			assert.Equal(c, 0, run.code, run.stderr)
			assert.Equal(c, want, rowsOf(run.report))
			healthy = run
		}
	}, 60*time.Second, 100*time.Millisecond)
	r := healthy.report
	require.True(t, r.Healthy)
	require.Empty(t, r.Problems)
	require.Empty(t, healthy.stderr)
	require.Equal(t, map[string]string{"batcher": "static", "sink": "static"}, r.Ownership)
	require.Len(t, r.Shards, nShards)
	for k, s := range r.Shards {
		assert.Equal(t, k, s.Shard)
		assert.Equal(t, "batcher", s.BatcherOwner, "shard %d", k)
		assert.Equal(t, "sink", s.SinkOwner, "shard %d", k)
		assert.Equal(t, uint64(0), s.Events.Pending, "shard %d", k)
		assert.Equal(t, uint64(0), s.Batches.Pending, "shard %d", k)
		assert.Equal(t, "sink-shard-"+fmt.Sprint(k), s.Batches.Consumer)
		assert.NotEmpty(t, s.Events.Consumer)
		if assert.NotNil(t, s.Watermark) {
			assert.Positive(t, *s.Watermark, "shard %d", k)
		}
		assert.NotNil(t, s.LastInsert, "shard %d", k)
		assert.NotNil(t, s.RowsPerSecond, "shard %d", k)
		assert.Zero(t, s.DeadLetters)
	}
	require.Len(t, r.Streams, 4)
	for _, s := range r.Streams {
		assert.False(t, s.Missing, s.Name)
		assert.Equal(t, 1, s.Replicas, s.Name)
		assert.Equal(t, 1, s.Current, s.Name)
		assert.Equal(t, int64(8<<30), s.MaxBytes, s.Name)
	}
	require.Len(t, r.Instances, 4)
	for i, name := range []string{"ingest", "partitioner", "batcher", "sink"} {
		assert.Equal(t, name, r.Instances[i].Name)
		assert.True(t, r.Instances[i].Ready, "%s: %v", name, r.Instances[i].Reasons)
	}
	screen, err := surgeStatus(t.Context(), bin, dir, nil, local...)
	require.NoError(t, err)
	require.Equal(t, 0, screen.code, screen.stderr)
	require.Contains(t, screen.stdout, ": HEALTHY\n")
	for k := range nShards {
		assert.Regexp(t, fmt.Sprintf(`(?m)^%d\s+batcher\s+sink\s+0\s+-\s+0\s+-\s+[\d,]+\s+%s\s`, k, status.Count(want[k])), screen.stdout)
	}
	t.Logf("healthy screen:\n%s", screen.stdout)

	// Any deployment: NATS, ClickHouse and the instances by flags, from a
	// folder without a local stack; the same by environment variables;
	// and a wrong password fails to read (exit 2).
	info := st.Info()
	elsewhere := t.TempDir()
	byFlags, err := surgeStatus(t.Context(), bin, elsewhere, nil, "--json", "--interval", "300ms",
		"--nats", info.NATSURL, "--user", info.NATSUser, "--password", info.NATSPassword,
		"--clickhouse", strings.Join(info.ClickHouse, ","), "--admin", "sink="+info.Admin["sink"]+",batcher-1="+info.Admin["batcher"])
	require.NoError(t, err)
	require.Equal(t, 0, byFlags.code, byFlags.stderr)
	require.Equal(t, want, rowsOf(byFlags.report))
	require.Len(t, byFlags.report.Instances, 2)
	require.Equal(t, "batcher-1", byFlags.report.Shards[0].BatcherOwner)
	env := []string{
		"SURGE_NATS_URL=" + info.NATSURL, "SURGE_NATS_USER=" + info.NATSUser, "SURGE_NATS_PASSWORD=" + info.NATSPassword,
		"SURGE_CLICKHOUSE_ADDRS=" + strings.Join(info.ClickHouse, ","),
	}
	byEnv, err := surgeStatus(t.Context(), bin, elsewhere, env, "--json", "--interval", "300ms")
	require.NoError(t, err)
	require.Equal(t, 0, byEnv.code, byEnv.stderr)
	require.Equal(t, want, rowsOf(byEnv.report))
	require.Equal(t, "static", byEnv.report.Shards[0].SinkOwner, "no admin address: static, instance unknown")
	denied, err := surgeStatus(t.Context(), bin, elsewhere, append(env, "SURGE_NATS_PASSWORD=wrong"), "--interval", "300ms")
	require.NoError(t, err)
	require.Equal(t, 2, denied.code)
	require.Contains(t, denied.stderr, "Authorization Violation")
	none, err := surgeStatus(t.Context(), bin, elsewhere, nil)
	require.NoError(t, err)
	require.Equal(t, 2, none.code)
	require.Contains(t, none.stderr, "no local stack in .surge")

	// --watch redraws the screen until interrupted, then exits with the
	// last verdict.
	watchStatus(t, bin, dir)

	// Dead letters: an invalid producer event is dead-lettered by the
	// partitioner; status names it until it is gone.
	nc, err := nats.Connect(info.NATSURL, nats.UserInfo(info.NATSUser, info.NATSPassword))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.Publish(t.Context(), "surge.in.demo.web", []byte(`{"user_id":"u1"}`))
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		run, err := surgeStatus(t.Context(), bin, dir, nil, local...)
		if assert.NoError(c, err) {
			assert.Equal(c, 1, run.code)
			assert.Contains(c, run.stderr, "stream DEAD_LETTER dead letters: 1 waiting (deadletter.partitioner.invalid.demo: 1)")
		}
	}, 30*time.Second, 100*time.Millisecond)
	dl, err := js.Stream(t.Context(), streams.DeadLetter)
	require.NoError(t, err)
	require.NoError(t, dl.Purge(t.Context()))

	// Lagging: with ClickHouse server 1 stopped, the sink cannot land the
	// batches of its shards (k mod 2 = 1), which wait in BATCHES; the
	// other shards drain.
	server := st.ClickHouse.Servers[1]
	require.NoError(t, server.Stop())
	post("b", 2000)
	down := []int{1, 3}
	var lagging statusRun
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		run, err := surgeStatus(t.Context(), bin, dir, nil, append(local, "--json", "--max-lag", "2s")...)
		if assert.NoError(c, err) {
			assert.Equal(c, 1, run.code)
			assert.Equal(c, down, status.ShardsWith(run.report.Problems, status.KindLagging))
			lagging = run
		}
	}, 30*time.Second, 100*time.Millisecond)
	r = lagging.report
	assert.Empty(t, status.ShardsWith(r.Problems, status.KindStalled))
	for _, k := range down {
		assert.Positive(t, r.Shards[k].Batches.Pending, "shard %d", k)
		assert.Contains(t, lagging.stderr, fmt.Sprintf("shard %d lagging: ", k))
		assert.Regexp(t, fmt.Sprintf(`shard %d lagging: \d+ waiting in BATCHES, oldest \d+s`, k), lagging.stderr)
		assert.Nil(t, r.Shards[k].Rows, "server 1 holds shard %d's rows and does not answer", k)
	}
	var kinds []string
	for _, p := range r.Problems {
		kinds = append(kinds, p.Subject+" "+p.Kind)
	}
	assert.ElementsMatch(t, []string{"shard 1 lagging", "shard 3 lagging", "clickhouse " + server.Addr() + " unreachable"}, kinds)

	// Stalled: past the stall threshold (30 s, as the sink's watchdog) the
	// same shards are stalled, and the sink is not ready, saying so.
	stalledReason := regexp.MustCompile(`^stalled shard (\d+): \d+ pending, no progress for \d+s, waiting on \w+ (into|from) clickhouse ` + regexp.QuoteMeta(server.Addr()) + `$`)
	var stalled statusRun
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		run, err := surgeStatus(t.Context(), bin, dir, nil, append(local, "--json")...)
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, 1, run.code)
		assert.Equal(c, down, status.ShardsWith(run.report.Problems, status.KindStalled))
		if !assert.Len(c, run.report.Instances, 4) {
			return
		}
		sink := run.report.Instances[3]
		assert.False(c, sink.Ready)
		var named []string
		for _, reason := range sink.Reasons {
			if m := stalledReason.FindStringSubmatch(reason); m != nil {
				named = append(named, m[1])
			}
		}
		assert.Equal(c, []string{"1", "3"}, named, sink.Reasons)
		stalled = run
	}, 90*time.Second, 500*time.Millisecond)
	for _, k := range down {
		assert.Regexp(t, fmt.Sprintf(`shard %d stalled: \d+ waiting in BATCHES, oldest \d+s, no progress for \d+s \(sink: stalled shard %d: `, k, k), stalled.stderr)
	}
	assert.Contains(t, stalled.stderr, "sink not ready: stalled shard 1: ")
	screen, err = surgeStatus(t.Context(), bin, dir, nil, local...)
	require.NoError(t, err)
	require.Equal(t, 1, screen.code)
	t.Logf("stalled screen:\n%s\nstderr: %s", screen.stdout, screen.stderr)

	// Recovered: ClickHouse back, the piled-up batches land, every row once.
	require.NoError(t, server.Start(t.Context()))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		run, err := surgeStatus(t.Context(), bin, dir, nil, append(local, "--json")...)
		if assert.NoError(c, err) {
			assert.Equal(c, 0, run.code, run.stderr)
			assert.Equal(c, want, rowsOf(run.report))
		}
	}, 60*time.Second, 200*time.Millisecond)
}

// watchStatus runs `surge status --watch`, waits for two redraws of the
// screen and interrupts it: it exits 0, the last look being healthy.
func watchStatus(t *testing.T, bin, dir string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin, "status", "--dir", dir, "--watch", "--interval", "200ms")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	screens := make(chan struct{}, 1)
	go func() {
		defer close(screens)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "\x1b[H\x1b[2J") {
				select {
				case screens <- struct{}{}:
				default:
				}
			}
		}
	}()
	for range 2 {
		select {
		case _, ok := <-screens:
			require.True(t, ok, "status --watch stopped: %s", stderr.String())
		case <-time.After(30 * time.Second):
			t.Fatal("status --watch drew no screen")
		}
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	require.NoError(t, cmd.Wait(), stderr.String())
	for range screens { // the reader ends with the output
	}
}
