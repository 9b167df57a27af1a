package stack_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/tools/stack"
)

func small(dir string) stack.Options {
	return stack.Options{Dir: dir, Shards: 2, ClickHouseServers: 1, NATSPort: -1}
}

// TestOneStackPerFolder: a second stack on a folder in use fails at once,
// naming the folder and the process, and leaves the first one running;
// once the first stops, the next one starts.
func TestOneStackPerFolder(t *testing.T) {
	ctx := t.Context()
	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	dir := t.TempDir()
	first, err := stack.Start(ctx, small(dir))
	require.NoError(t, err)
	t.Cleanup(func() { _ = first.Stop() })

	start := time.Now()
	second, err := stack.Start(ctx, small(dir))
	require.Nil(t, second)
	require.EqualError(t, err, inUse(dir, os.Getpid()))
	require.ErrorIs(t, err, stack.ErrInUse)
	require.Less(t, time.Since(start), time.Second, "refused at once")
	_, err = stack.Start(ctx, stack.Options{Dir: t.TempDir(), NATSSync: "sometimes"})
	require.EqualError(t, err, `nats sync must be "always" or "interval", got "sometimes"`)

	sync, err := natsserver.SyncOf(first.NATS)
	require.NoError(t, err)
	require.Equal(t, natsserver.SyncInterval, sync, "the first stack still runs, as it was")
	requireDrains(t, first, 10)
	require.NoError(t, first.Stop())

	marker := filepath.Join(dir, "nats", "marker")
	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	o := small(dir)
	o.Fresh, o.NATSSync = true, natsserver.SyncAlways
	next, err := stack.Start(ctx, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = next.Stop() })
	require.NoFileExists(t, marker, "Fresh cleared the folder")
	sync, err = natsserver.SyncOf(next.NATS)
	require.NoError(t, err)
	require.Equal(t, natsserver.SyncAlways, sync)
	require.NoError(t, next.Stop())
}

// requireDrains sends n events and waits until the sink has inserted them
// and the backlog, read from the running server, is empty again.
func requireDrains(t *testing.T, st *stack.Stack, n int) {
	t.Helper()
	var events []string
	for i := range n {
		events = append(events, fmt.Sprintf(`{"user_id":"u%d","type":"click"}`, i))
	}
	client := &http.Client{Timeout: 10 * time.Second}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, st.IngestURL+"/v1/events", strings.NewReader("["+strings.Join(events, ",")+"]"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, float64(n), st.Inserted())
		b, err := st.Backlog()
		assert.NoError(c, err)
		assert.Equal(c, stack.Backlog{}, b)
	}, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, float64(n), st.Accepted())
}
