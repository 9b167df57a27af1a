package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/tools/stack"
)

// TestClusterUpCommand runs `surge up --cluster` as a user would: every
// server and two processes of each service run as separate processes. It
// sends events to both ingest instances, checks each lands exactly once on
// both replicas of its ClickHouse shard, then stops the cluster with
// SIGTERM and checks that every process it started is gone.
func TestClusterUpCommand(t *testing.T) {
	const perIngest, perPost = 1500, 100

	bin := filepath.Join(t.TempDir(), "surge")
	build := exec.Command("go", "build", "-o", bin, "github.com/surge-events/surge/tools/cmd/surge")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))

	dir := t.TempDir()
	addrs := []string{freeAddr(t), freeAddr(t)}
	// Run from the source tree (this package's folder), where surge builds
	// the service binaries.
	up := exec.Command(bin, "up", "--cluster", "--dir", dir, "--http", strings.Join(addrs, ","))
	stdout, err := up.StdoutPipe()
	require.NoError(t, err)
	up.Stderr = os.Stderr
	require.NoError(t, up.Start())
	t.Cleanup(func() { _ = up.Process.Kill(); _ = up.Wait() })

	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(os.Stderr, sc.Text())
			select {
			case lines <- sc.Text():
			default: // progress lines nobody reads are dropped
			}
		}
	}()
	waitFor(t, lines, "Press Ctrl-C to stop.", 120*time.Second)

	info, err := stack.ReadInfo(dir)
	require.NoError(t, err)
	require.Equal(t, []string{"http://" + addrs[0], "http://" + addrs[1]}, info.IngestURLs)
	require.Len(t, info.ClickHouseReplicas, 2)
	require.Len(t, info.HTTP, 4)
	require.Len(t, info.Admin, 8)
	// 8 services, 4 ClickHouse servers, ZooKeeper, 3 NATS nodes.
	require.Len(t, info.PIDs, 16)

	for i, base := range info.IngestURLs {
		for p := range perIngest / perPost {
			var events []string
			for k := range perPost {
				events = append(events, fmt.Sprintf(`{"user_id":"u-%d-%d-%d","type":"click"}`, i, p, k))
			}
			resp, err := client.Post(base+"/v1/events", "application/json", strings.NewReader("["+strings.Join(events, ",")+"]"))
			require.NoError(t, err)
			answer, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusAccepted, resp.StatusCode, string(answer))
			require.JSONEq(t, fmt.Sprintf(`{"accepted":%d}`, perPost), string(answer))
		}
	}

	// info.HTTP lists the servers shard by shard: 0-0, 0-1, 1-0, 1-1.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		var counts []string
		for _, addr := range info.HTTP {
			n, err := chQuery(addr, "SELECT count(), uniqExact(user_id) FROM surge.events_local FORMAT TSV")
			if !assert.NoError(c, err) {
				return
			}
			counts = append(counts, n)
		}
		for shard := range 2 {
			// Both replicas hold the same rows, each user once.
			assert.Equal(c, counts[2*shard], counts[2*shard+1], "shard %d replicas", shard)
		}
		var total, unique int
		for shard := range 2 {
			var n, u int
			_, err := fmt.Sscanf(counts[2*shard], "%d\t%d", &n, &u)
			if assert.NoError(c, err) {
				total += n
				unique += u
			}
		}
		assert.Equal(c, 2*perIngest, total)
		assert.Equal(c, 2*perIngest, unique)
	}, 60*time.Second, 250*time.Millisecond)

	// `surge query` finds the cluster through stack.json and reads the
	// Distributed table over both shards.
	q := exec.CommandContext(t.Context(), bin, "query", "--dir", dir, "SELECT count() AS n FROM surge.events")
	out, err = q.CombinedOutput()
	require.NoError(t, err, string(out))
	require.Regexp(t, fmt.Sprintf(`\b%d\b`, 2*perIngest), string(out))

	require.NoError(t, up.Process.Signal(syscall.SIGTERM))
	waitFor(t, lines, "stopped cleanly", 60*time.Second)
	done := make(chan error, 1)
	go func() { done <- up.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("surge up did not exit after SIGTERM")
	}
	// surge waited for each child, so none lingers even as a zombie.
	for name, pid := range info.PIDs {
		assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "%s (pid %d) still runs", name, pid)
	}
	_, err = os.Stat(filepath.Join(dir, stack.InfoFile))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// chQuery runs sql on a ClickHouse HTTP interface and returns the answer.
func chQuery(addr, sql string) (string, error) {
	resp, err := client.Get("http://" + addr + "/?query=" + url.QueryEscape(sql))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(strings.TrimSpace(string(body)))
	}
	return strings.TrimSpace(string(body)), nil
}
