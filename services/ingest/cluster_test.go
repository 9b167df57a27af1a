package ingest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natscluster"
)

// Bounds of the ingest cluster test. A SIGKILLed stream leader leaves
// INGEST without one for a raft election (4-8 s measured here); a SIGTERMed
// one steps down at once.
const (
	killResumeBound = 15 * time.Second
	stopResumeBound = 3 * time.Second
	// eventsPerRequest is the events of one request of the load, sent by
	// loadClients clients, each at most one request every requestEvery.
	eventsPerRequest = 3
	loadClients      = 4
	requestEvery     = 2 * time.Millisecond
)

// answer is one HTTP answer of the load.
type answer struct {
	at         time.Time
	status     int
	retryAfter string
}

// clusterLoad is steady HTTP load against one ingest: each client sends
// requests with its own Idempotency-Keys and, like a well-behaved client,
// retries a 503 with the same key until it gets a 202.
type clusterLoad struct {
	addr   string
	client *http.Client

	mu       sync.Mutex
	answers  []answer
	accepted map[string]int // Idempotency-Key -> events 202'd
	sent     map[string]bool
}

func (l *clusterLoad) record(a answer, key string, events int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers = append(l.answers, a)
	if a.status == http.StatusAccepted {
		l.accepted[key] = events
	}
}

// acceptedCount is how many requests got a 202.
func (l *clusterLoad) acceptedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

// since returns the answers at or after t.
func (l *clusterLoad) since(t time.Time) []answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []answer
	for _, a := range l.answers {
		if !a.at.Before(t) {
			out = append(out, a)
		}
	}
	return out
}

// run sends requests from one client until ctx ends.
func (l *clusterLoad) run(ctx context.Context, client int) error {
	for n := 0; ; n++ {
		key := fmt.Sprintf("c%d-r%d", client, n)
		var body bytes.Buffer
		body.WriteString("[")
		for j := range eventsPerRequest {
			if j > 0 {
				body.WriteString(",")
			}
			fmt.Fprintf(&body, `{"event_id":"%s-e%d","user_id":"u%d","type":"click","ts":"2024-01-01T00:00:00Z"}`, key, j, n%17)
		}
		body.WriteString("]")
		l.mu.Lock()
		l.sent[key] = true
		l.mu.Unlock()
		for {
			if ctx.Err() != nil {
				return nil
			}
			status, retryAfter, err := l.post(ctx, key, body.Bytes())
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			l.record(answer{at: time.Now(), status: status, retryAfter: retryAfter}, key, eventsPerRequest)
			switch status {
			case http.StatusAccepted:
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(requestEvery):
				}
			case http.StatusServiceUnavailable:
				// Retry soon (not after Retry-After), to see the end of
				// the outage to within tens of milliseconds.
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(20 * time.Millisecond):
				}
				continue
			default:
				return fmt.Errorf("request %s: unexpected status %d", key, status)
			}
			break
		}
	}
}

func (l *clusterLoad) post(ctx context.Context, key string, body []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+l.addr+EventsPath, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderIdempotencyKey, key)
	resp, err := l.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, "", fmt.Errorf("read answer: %w", err)
	}
	return resp.StatusCode, resp.Header.Get("Retry-After"), nil
}

// TestClusterLeaderLoss runs ingest against a 3-node NATS cluster with
// INGEST at R3, under steady HTTP load, and loses INGEST's leader: first to
// a SIGKILL (no leader until raft elects one), then to a SIGTERM (the
// leader steps down). Requests get 503 with Retry-After while there is no
// leader and 202 again once there is one, within a bound; after the nodes
// are back, every 202'd request is in INGEST exactly once.
func TestClusterLeaderLoss(t *testing.T) {
	c := natscluster.Start(t, 3)

	cfg := DefaultConfig()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.NATS.URL = c.URLs()
	cfg.NATS.ConnectTimeout = 10 * time.Second
	cfg.Streams.Replicas = 3
	cfg.Streams.MaxBytes = 64 << 20
	cfg.Ingest.PublishTimeout = 2 * time.Second
	cfg.HTTP.ShutdownTimeout = 5 * time.Second
	svc, err := New(cfg, service.Deps{
		Logger:         zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Registry:       prometheus.NewRegistry(),
		TracerProvider: noop.NewTracerProvider(),
	})
	require.NoError(t, err)
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- svc.Run(runCtx) }()
	t.Cleanup(func() {
		stopRun()
		select {
		case err := <-runDone:
			assert.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("ingest did not stop within 20s")
		}
	})

	transport := &http.Transport{MaxIdleConnsPerHost: 8}
	t.Cleanup(transport.CloseIdleConnections)
	load := &clusterLoad{addr: svc.Addr(), client: &http.Client{Transport: transport, Timeout: 10 * time.Second}, accepted: map[string]int{}, sent: map[string]bool{}}
	require.EventuallyWithT(t, func(co *assert.CollectT) {
		status, _, err := load.post(t.Context(), "probe", []byte(`{"event_id":"probe","user_id":"u","type":"t","ts":"2024-01-01T00:00:00Z"}`))
		if assert.NoError(co, err) {
			assert.Equal(co, http.StatusAccepted, status)
		}
	}, 15*time.Second, 50*time.Millisecond, "ingest serves")

	// The clients stop at the end of the load or at the first failure.
	loadCtx, stopLoad := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	loadErrs := make(chan error, loadClients)
	for i := range loadClients {
		wg.Go(func() {
			if err := load.run(loadCtx, i); err != nil {
				loadErrs <- err
				stopLoad()
			}
		})
	}
	waitLoad := func() error {
		stopLoad()
		wg.Wait()
		select {
		case err := <-loadErrs:
			return err
		default:
			return nil
		}
	}
	t.Cleanup(func() { assert.NoError(t, waitLoad(), "load") })

	// progress waits until the load has had `more` requests 202'd.
	progress := func(more int, within time.Duration) {
		t.Helper()
		target := load.acceptedCount() + more
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			assert.GreaterOrEqual(co, load.acceptedCount(), target)
		}, within, 10*time.Millisecond, "load makes progress")
	}
	progress(100, 10*time.Second)

	for _, fault := range []struct {
		name        string
		do          func(int) error
		bound       time.Duration
		needOutage  bool
		description string
	}{
		{"SIGKILL", c.Kill, killResumeBound, true, "no leader until an election"},
		{"SIGTERM", c.Stop, stopResumeBound, false, "the leader steps down"},
	} {
		leader, err := c.StreamLeader(streams.Ingest)
		require.NoError(t, err)
		faultAt := time.Now()
		require.NoError(t, fault.do(leader))
		// 202 again within the bound: the first 202 after the first
		// failure (or any 202 when none failed).
		var resumed time.Duration
		var failed int
		require.EventuallyWithT(t, func(co *assert.CollectT) {
			answers := load.since(faultAt)
			first503 := -1
			for i, a := range answers {
				if a.status == http.StatusServiceUnavailable {
					first503 = i
					break
				}
			}
			if fault.needOutage && !assert.NotEqual(co, -1, first503, "a 503 while INGEST has no leader") {
				return
			}
			for i := max(first503, 0); i < len(answers); i++ {
				if answers[i].status == http.StatusAccepted {
					resumed = answers[i].at.Sub(faultAt)
					failed = 0
					for _, a := range answers[:i] {
						if a.status == http.StatusServiceUnavailable {
							failed++
						}
					}
					return
				}
			}
			assert.Fail(co, "no 202 since the first 503")
		}, fault.bound, 10*time.Millisecond, "%s of INGEST's leader %s (%s): 202 again within %s", fault.name, c.Name(leader), fault.description, fault.bound)
		next, err := c.WaitStreamLeader(streams.Ingest, leader, fault.bound)
		require.NoError(t, err)
		// The longest time without a 202 around the fault.
		var gap time.Duration
		var prev time.Time
		for _, a := range load.since(faultAt.Add(-time.Second)) {
			if a.status == http.StatusAccepted {
				if !prev.IsZero() {
					gap = max(gap, a.at.Sub(prev))
				}
				prev = a.at
			}
		}
		assert.Less(t, gap, fault.bound, "longest time without a 202")
		t.Logf("%s of INGEST's leader %s: %s leads; 202 again %s after the fault, %d answers 503 meanwhile, longest time without a 202 %s",
			fault.name, c.Name(leader), c.Name(next), resumed.Round(time.Millisecond), failed, gap.Round(time.Millisecond))
		for _, a := range load.since(faultAt) {
			if a.status == http.StatusServiceUnavailable {
				require.Equal(t, "1", a.retryAfter, "a 503 carries Retry-After")
			}
		}
		progress(50, 10*time.Second)
		require.NoError(t, c.Restart(leader))
		progress(50, 10*time.Second)
	}

	require.NoError(t, waitLoad())

	// Every 202'd request is in INGEST once: its Nats-Msg-Id once and its
	// events as sent, on a cluster whose every node is back and current.
	nc, err := nats.Connect(c.URLs())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	st, err := js.Stream(t.Context(), streams.Ingest)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(co *assert.CollectT) {
		info, err := st.Info(t.Context())
		if !assert.NoError(co, err) || !assert.NotNil(co, info.Cluster) {
			return
		}
		assert.Len(co, info.Cluster.Replicas, 2)
		for _, r := range info.Cluster.Replicas {
			assert.True(co, r.Current, "replica %s current", r.Name)
		}
	}, 15*time.Second, 50*time.Millisecond, "every INGEST replica current")

	seen := map[string]int{}
	events := 0
	info, err := st.Info(t.Context())
	require.NoError(t, err)
	require.Equal(t, info.State.LastSeq-info.State.FirstSeq+1, info.State.Msgs, "nothing left INGEST")
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(t.Context(), seq)
		require.NoError(t, err)
		seen[m.Header.Get(jetstream.MsgIDHeader)]++
		evs, err := event.Decode(m.Data)
		require.NoError(t, err)
		require.Equal(t, strconv.Itoa(len(evs)), m.Header.Get(streams.HeaderRows))
		events += len(evs)
	}
	// Each 202'd request once; besides them only the probe and, at most
	// once each, requests in flight when the load stopped (one a client).
	tenant := DefaultConfig().Ingest.DefaultTenant
	accepted := 0
	for key, n := range load.accepted {
		require.Equal(t, 1, seen[tenant+":"+key], "request %s stored once", key)
		accepted += n
	}
	assert.Equal(t, 1, seen[tenant+":probe"], "the probe once")
	extra := 0
	for id, n := range seen {
		key, ok := strings.CutPrefix(id, tenant+":")
		require.True(t, ok, "message id %q of the load", id)
		require.Equal(t, 1, n, "request %s stored once", key)
		if _, ok := load.accepted[key]; !ok && key != "probe" {
			extra++
			require.True(t, load.sent[key], "request %s was sent", key)
		}
	}
	assert.LessOrEqual(t, extra, loadClients, "requests stored but not answered 202 before the load stopped")
	assert.Equal(t, accepted+1+extra*eventsPerRequest, events, "events in INGEST")
	t.Logf("%d requests (%d events) 202'd, each in INGEST once", len(load.accepted), accepted)
}
