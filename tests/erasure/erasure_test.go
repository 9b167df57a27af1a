// Package erasure_test erases users' data from a running pipeline (issue
// 20 part 2): real NATS JetStream, ZooKeeper and two ClickHouse shards of
// two replicas each; ingest, the partitioner, the batcher and the sink of
// shards 4-7 in process, the sink of shards 0-3, which runs the eraser, as
// an OS process of the sink command, SIGKILLed mid-way through a request.
package erasure_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
	"github.com/surge-events/surge/services/batcher"
	"github.com/surge-events/surge/services/ingest"
	"github.com/surge-events/surge/services/partitioner"
	"github.com/surge-events/surge/services/sink"
	"github.com/surge-events/surge/tools/stack"
)

const (
	tenant   = "default"
	shards   = 8
	users    = 10000
	erased   = 1000 // users u-00000 .. u-00999
	adminKey = "erasure-test-admin-key"
	database = "surge"
)

func user(i int) string { return fmt.Sprintf("u-%05d", i) }

// env is the running pipeline.
type env struct {
	t       *testing.T
	url     string // ingest
	js      jetstream.JetStream
	nc      *nats.Conn
	ch      *chserver.Cluster
	conns   []driver.Conn // shard 0 replica 0, shard 0 replica 1, shard 1 replica 0, ...
	regs    map[string]*prometheus.Registry
	natsURL string
	chAddrs []string
	chName  string
}

// part is a service running until its cancel.
type part struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error
}

func (p *part) stop() error {
	p.cancel()
	<-p.done
	return p.err
}

type runner interface {
	Run(ctx context.Context) error
	AdminAddr() string
}

// start runs svc until the test ends (or stop) and waits until /readyz.
func (e *env) start(name string, svc runner) *part {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &part{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = svc.Run(ctx)
	}()
	e.t.Cleanup(func() { _ = p.stop() })
	require.EventuallyWithT(e.t, func(c *assert.CollectT) {
		resp, err := http.Get("http://" + svc.AdminAddr() + "/readyz")
		if assert.NoError(c, err) {
			_ = resp.Body.Close()
			assert.Equal(c, http.StatusOK, resp.StatusCode, name+" ready")
		}
	}, 90*time.Second, 50*time.Millisecond)
	return p
}

func (e *env) deps(name string) service.Deps {
	reg := prometheus.NewRegistry()
	e.regs[name] = reg
	return service.Deps{Logger: zap.NewNop(), Registry: reg, TracerProvider: noop.NewTracerProvider()}
}

func (e *env) sinkConfig(owned []int, eraser bool) sink.Config {
	c := sink.DefaultConfig()
	c.NATS.URL = e.natsURL
	c.Admin.Addr = "127.0.0.1:0"
	c.Shards = shards
	c.Owned = owned
	c.LeaseTTL = 2 * time.Second
	c.ClickHouse.Addrs = e.chAddrs
	c.ClickHouse.Replicated = true
	c.ClickHouse.Cluster = e.chName
	c.ClickHouse.Database = database
	c.Erasure.Enabled = eraser
	c.Erasure.Settle = time.Second
	c.Erasure.Every = 100 * time.Millisecond
	return c
}

func (e *env) startSink(name string, owned []int, eraser bool) *part {
	e.t.Helper()
	svc, err := sink.New(e.sinkConfig(owned, eraser), e.deps(name))
	require.NoError(e.t, err)
	return e.start(name, svc)
}

// sinkPackage is the command a sink process runs.
const sinkPackage = "github.com/surge-events/surge/services/sink/cmd/sink"

// buildSink compiles the sink command into a temporary folder of the test.
// `go build` runs in the test's folder, inside the source tree, so go.work
// applies.
func buildSink(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sink")
	out, err := exec.Command("go", "build", "-o", bin, sinkPackage).CombinedOutput()
	require.NoError(t, err, "go build %s: %s", sinkPackage, out)
	return bin
}

// sinkProcess is a sink run as an OS process: every start runs the same
// binary with the same configuration file, so a process started after a
// SIGKILL is the one that was killed, started again.
type sinkProcess struct {
	t      *testing.T
	name   string
	bin    string
	config string // YAML, passed as --config
	admin  string // host:port of /readyz
	log    string // every start's output, appended
}

// newSinkProcess writes sinkConfig(owned, eraser), with an admin port of
// its own, to a configuration file for bin.
func (e *env) newSinkProcess(name, bin string, owned []int, eraser bool) *sinkProcess {
	e.t.Helper()
	free, err := ports.Free(1)
	require.NoError(e.t, err)
	cfg := e.sinkConfig(owned, eraser)
	cfg.Admin.Addr = "127.0.0.1:" + strconv.Itoa(free[0])
	data, err := yaml.Marshal(&cfg)
	require.NoError(e.t, err)
	dir := e.t.TempDir()
	s := &sinkProcess{t: e.t, name: name, bin: bin, admin: cfg.Admin.Addr,
		config: filepath.Join(dir, name+".yaml"), log: filepath.Join(dir, name+".log")}
	require.NoError(e.t, os.WriteFile(s.config, data, 0o644))
	e.t.Cleanup(func() {
		if e.t.Failed() {
			e.t.Logf("%s log (%s), last lines:\n%s", name, s.log, proc.Tail(s.log, 40))
		}
	})
	return s
}

// start starts the process, stops it (SIGTERM) when the test ends and
// waits until its /readyz answers 200.
func (s *sinkProcess) start() *proc.Process {
	t := s.t
	t.Helper()
	cmd := exec.Command(s.bin, "--config", s.config)
	// The file is the whole configuration: no SURGE_* variable of the
	// caller's environment overrides it.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SURGE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	p, err := proc.Start(cmd, s.log)
	require.NoError(t, err, "start %s", s.name)
	t.Cleanup(func() {
		if err := p.Stop(30 * time.Second); err != nil {
			t.Errorf("stop %s: %v", s.name, err)
		}
	})
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		if !assert.True(c, p.Running(), "%s exited: %s", s.name, p.ExitState()) {
			return
		}
		resp, err := http.Get("http://" + s.admin + "/readyz")
		if assert.NoError(c, err) {
			_ = resp.Body.Close()
			assert.Equal(c, http.StatusOK, resp.StatusCode, s.name+" ready")
		}
	}, 90*time.Second, 50*time.Millisecond, "%s ready (its log ends the test's output)", s.name)
	return p
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns := natstest.Start(t)
	e := &env{t: t, natsURL: ns.ClientURL(), regs: map[string]*prometheus.Registry{}}
	e.js = natstest.JetStream(t, ns.ClientURL())
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	e.nc = nc

	require.NoError(t, chserver.EnsureInstalled(ctx, t.Logf))
	require.NoError(t, zookeeper.EnsureInstalled(ctx, t.Logf))
	zk, err := zookeeper.Start(ctx, t.TempDir())
	require.NoError(t, err)
	t.Cleanup(func() { _ = zk.Stop() })
	ch, err := chserver.Start(ctx, t.TempDir(), chserver.Options{Shards: 2, Replicas: 2, ZooKeeper: zk.Addr()})
	require.NoError(t, err)
	t.Cleanup(ch.Stop)
	e.ch, e.chName = ch, ch.Name
	for _, replicas := range ch.ReplicaAddrs() {
		e.chAddrs = append(e.chAddrs, strings.Join(replicas, sink.ReplicaSeparator))
	}
	for _, addr := range ch.Addrs() {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: 2 * time.Second,
			Settings: clickhouse.Settings{"max_query_size": 16 << 20}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		e.conns = append(e.conns, conn)
	}

	icfg := ingest.DefaultConfig()
	icfg.NATS.URL = e.natsURL
	icfg.HTTP.Addr = "127.0.0.1:0"
	icfg.Admin.Addr = "127.0.0.1:0"
	icfg.Ingest.AdminKey = adminKey
	in, err := ingest.New(icfg, e.deps("ingest"))
	require.NoError(t, err)
	e.url = "http://" + in.Addr()
	e.start("ingest", in)

	pcfg := partitioner.DefaultConfig()
	pcfg.NATS.URL = e.natsURL
	pcfg.Admin.Addr = "127.0.0.1:0"
	pcfg.Shards = shards
	p, err := partitioner.New(pcfg, e.deps("partitioner"))
	require.NoError(t, err)
	e.start("partitioner", p)

	bcfg := batcher.DefaultConfig()
	bcfg.NATS.URL = e.natsURL
	bcfg.Admin.Addr = "127.0.0.1:0"
	bcfg.Shards = shards
	b, err := batcher.New(bcfg, e.deps("batcher"))
	require.NoError(t, err)
	e.start("batcher", b)
	return e
}

// ev is one event as sent.
type ev struct {
	EventID string `json:"event_id"`
	UserID  string `json:"user_id"`
	Type    string `json:"type"`
	TS      string `json:"ts,omitempty"`
}

// post sends events and returns how many ingest stored.
func (e *env) post(ctx context.Context, events []ev) (int, error) {
	body, _ := json.Marshal(events)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+ingest.EventsPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return 0, fmt.Errorf("post: %d %s", resp.StatusCode, b)
	}
	var answer struct{ Accepted int }
	if err := json.Unmarshal(b, &answer); err != nil {
		return 0, err
	}
	return answer.Accepted, nil
}

func (e *env) uint(i int, q string) (uint64, error) {
	var n uint64
	err := e.conns[i].QueryRow(context.Background(), q).Scan(&n)
	return n, err
}

func (e *env) mustUint(i int, q string) uint64 {
	e.t.Helper()
	n, err := e.uint(i, q)
	require.NoError(e.t, err, q)
	return n
}

// erasedList is the SQL list of the erased users.
func erasedList() string {
	var b strings.Builder
	for i := range erased {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("'" + user(i) + "'")
	}
	return b.String()
}

// loadStats is what the load sent and ingest stored.
type loadStats struct {
	keptStored atomic.Int64 // events of kept users stored (202)
	erasedSent atomic.Int64
	// posting is held by the load for each post: the test holds it to
	// read what ingest drops of one post of its own alone.
	posting sync.Mutex
}

// load posts 200 events of random users every 20ms until stop, with ids
// p2-<n>.
func (e *env) load(stop <-chan struct{}, st *loadStats) error {
	n := 0
	rng := rand.New(rand.NewPCG(1, 2))
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(20 * time.Millisecond):
		}
		events := make([]ev, 200)
		kept := 0
		for i := range events {
			u := rng.IntN(users)
			events[i] = ev{EventID: fmt.Sprintf("p2-%d", n), UserID: user(u), Type: "load"}
			n++
			if u >= erased {
				kept++
			} else {
				st.erasedSent.Add(1)
			}
		}
		st.posting.Lock()
		_, err := e.post(context.Background(), events)
		st.posting.Unlock()
		if err != nil {
			return err
		}
		st.keptStored.Add(int64(kept))
	}
}

func encoded(evs ...ev) []byte {
	now := time.Now()
	var out []event.Event
	for _, x := range evs {
		out = append(out, event.Event{EventID: x.EventID, Tenant: tenant, UserID: x.UserID, Type: "dl", TS: now, ReceivedAt: now, Properties: "{}"})
	}
	return event.AppendEncoded(nil, out)
}

// deadLetters puts dead letters of erased and kept users in DEAD_LETTER.
func (e *env) deadLetters(ctx context.Context) {
	e.t.Helper()
	b := &batch.Batch{Shard: 6}
	b.Append(77, []event.Event{
		{EventID: "dl-b1", Tenant: tenant, UserID: user(6), Type: "dl", TS: time.Now(), ReceivedAt: time.Now(), Properties: "{}"},
		{EventID: "dl-b2", Tenant: tenant, UserID: user(5002), Type: "dl", TS: time.Now(), ReceivedAt: time.Now(), Properties: "{}"},
	})
	msgs := []streams.DeadLetterMsg{
		{Service: "batcher", Subject: streams.DeadLetterSubject("batcher", 3), Source: streams.EventsSubject(3), SourceSeq: 990001,
			Reason: "only erased", Data: encoded(ev{EventID: "dl-1", UserID: user(1)}, ev{EventID: "dl-2", UserID: user(2)})},
		{Service: "batcher", Subject: streams.DeadLetterSubject("batcher", 4), Source: streams.EventsSubject(4), SourceSeq: 990002,
			Reason: "mixed", Data: encoded(ev{EventID: "dl-3", UserID: user(3)}, ev{EventID: "dl-4", UserID: user(5000)})},
		{Service: "ingest", Subject: streams.IngestInvalidSubject(tenant), Source: "ingest", SourceSeq: 990003, Index: 0, HasIndex: true,
			Tenant: tenant, Reason: "an item", Data: []byte(`{"userId":"` + user(4) + `","event":""}`)},
		{Service: "batcher", Subject: streams.DeadLetterSubject("batcher", 5), Source: streams.EventsSubject(5), SourceSeq: 990004,
			Reason: "kept only", Data: encoded(ev{EventID: "dl-5", UserID: user(5001)})},
		{Service: "sink", Subject: streams.DeadLetterSubject("sink", 6), Source: streams.BatchesSubject(6), SourceSeq: 990005,
			BatchID: b.ID(), Reason: "mixed batch", Data: batch.Encode(b)},
	}
	for _, m := range msgs {
		_, err := e.js.PublishMsg(ctx, m.Msg())
		require.NoError(e.t, err)
	}
}

// deadLetterUsers reads DEAD_LETTER whole: the user ids of each message
// by its reason.
func (e *env) deadLetterUsers(ctx context.Context) map[string][]string {
	e.t.Helper()
	st, err := e.js.Stream(ctx, streams.DeadLetter)
	require.NoError(e.t, err)
	info, err := st.Info(ctx)
	require.NoError(e.t, err)
	out := map[string][]string{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		require.NoError(e.t, err)
		reason := m.Header.Get(streams.HeaderReason)
		switch {
		case strings.HasPrefix(m.Header.Get(streams.HeaderSource), "batches."):
			b, err := batch.Decode(m.Data)
			require.NoError(e.t, err)
			out[reason] = append(out[reason], b.UserID...)
		case strings.HasPrefix(m.Header.Get(streams.HeaderSource), "events."):
			evs, err := event.Decode(m.Data)
			require.NoError(e.t, err)
			for _, x := range evs {
				out[reason] = append(out[reason], x.UserID)
			}
		default:
			out[reason] = append(out[reason], string(m.Data))
		}
	}
	return out
}

func TestErasure(t *testing.T) {
	sinkBin := buildSink(t)
	e := newEnv(t)
	ctx := t.Context()
	// The eraser runs in sink-a alone: sink-b has it off.
	sinkA := e.newSinkProcess("sink-a", sinkBin, []int{0, 1, 2, 3}, true)
	first := sinkA.start()
	e.startSink("sink-b", []int{4, 5, 6, 7}, false)

	// Phase 1: two events of each of the 10,000 users, landed.
	var p1 []ev
	for u := range users {
		for i := range 2 {
			p1 = append(p1, ev{EventID: fmt.Sprintf("p1-%d-%d", u, i), UserID: user(u), Type: "p1"})
		}
	}
	for i := 0; i < len(p1); i += 500 {
		n, err := e.post(ctx, p1[i:i+500])
		require.NoError(t, err)
		require.Equal(t, 500, n)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.uint(0, "SELECT count() FROM "+database+".events WHERE event_id LIKE 'p1-%'")
		assert.NoError(c, err)
		assert.Equal(c, uint64(2*users), n)
	}, time.Minute, 100*time.Millisecond, "phase 1 landed")
	keptQ := "SELECT %s FROM " + database + ".events_local WHERE event_id LIKE 'p1-%%' AND user_id NOT IN (" + erasedList() + ")"
	type stats struct{ count, sum uint64 }
	before := make([]stats, len(e.conns))
	for i := range e.conns {
		require.EventuallyWithT(t, func(c *assert.CollectT) { // the second replica may lag
			n, err := e.uint(i, fmt.Sprintf(keptQ, "count()"))
			assert.NoError(c, err)
			other, err := e.uint(i^1, fmt.Sprintf(keptQ, "count()"))
			assert.NoError(c, err)
			assert.Equal(c, other, n)
		}, 30*time.Second, 100*time.Millisecond)
		before[i] = stats{e.mustUint(i, fmt.Sprintf(keptQ, "count()")), e.mustUint(i, fmt.Sprintf(keptQ, "sum(cityHash64(event_id))"))}
	}
	require.Equal(t, uint64(2*(users-erased)), before[0].count+before[2].count)
	e.deadLetters(ctx)

	// Load runs through the erasure; one request of every erased user's
	// event is in flight when the request comes.
	stop := make(chan struct{})
	var st loadStats
	loadErr := make(chan error, 1)
	go func() { loadErr <- e.load(stop, &st) }()
	var inflight []ev
	for u := range erased {
		inflight = append(inflight, ev{EventID: fmt.Sprintf("inflight-%d", u), UserID: user(u), Type: "inflight"})
	}
	_, err := e.post(ctx, inflight)
	require.NoError(t, err)

	var list []string
	for u := range erased {
		list = append(list, user(u))
	}
	id := e.submit(ctx, list)
	t.Logf("erasure request %s", id)

	// Kill the runner's process mid-way (SIGKILL: no deferred call, no
	// last save): once shard 0 has the mutation, the request is
	// landed-past with its batch named and not yet deleted.
	store, err := erasure.Open(ctx, e.js, 1)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.uint(0, "SELECT count() FROM system.mutations WHERE position(command, 'erasure ') > 0")
		assert.NoError(c, err)
		assert.Equal(c, uint64(1), n)
	}, 2*time.Minute, 5*time.Millisecond, "the mutation reached shard 0")
	require.NoError(t, first.StopWith(syscall.SIGKILL, 30*time.Second))
	ws, ok := first.ExitState().Sys().(syscall.WaitStatus)
	require.True(t, ok)
	require.Equal(t, syscall.SIGKILL, ws.Signal(), "sink-a ended by the SIGKILL, not on its own: %s", first.ExitState())
	r, err := store.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, erasure.LandedPast, r.State, "killed mid-way")
	require.NotEmpty(t, r.Batch)
	t.Logf("sink-a (pid %d) killed in state %s, batch %s; sink-a started again resumes it", first.PID(), r.State, r.Batch)
	sinkA.start()

	require.EventuallyWithT(t, func(c *assert.CollectT) {
		r, err := store.Get(ctx, id)
		if assert.NoError(c, err) {
			assert.Equal(c, erasure.Verified, r.State, r.LastError)
		}
	}, 2*time.Minute, 100*time.Millisecond, "verified")

	// New events of erased users are refused, exactly, at ingest and at
	// the partitioner (NATS producers); the others are stored.
	var refused []ev
	for u := range 100 {
		refused = append(refused, ev{EventID: fmt.Sprintf("late-%d", u), UserID: user(u), Type: "late"})
	}
	for u := range 50 {
		refused = append(refused, ev{EventID: fmt.Sprintf("late-kept-%d", u), UserID: user(erased + u), Type: "late"})
	}
	// The load, still running, posts erased users' events too: its posts
	// wait meanwhile, so ingest's count moves by this post's alone.
	var dropped, droppedAfter float64
	n, err := func() (int, error) {
		st.posting.Lock()
		defer st.posting.Unlock()
		dropped = stack.Sum(e.regs["ingest"], "surge_ingest_erased_events_dropped_total")
		n, err := e.post(ctx, refused)
		droppedAfter = stack.Sum(e.regs["ingest"], "surge_ingest_erased_events_dropped_total")
		return n, err
	}()
	require.NoError(t, err)
	require.Equal(t, 50, n, "the kept users' events are stored")
	require.Equal(t, dropped+100, droppedAfter)
	// New ids: the batcher's event-level dedup would drop a copy.
	var viaNATS []ev
	for i, x := range append(refused[:10:10], refused[100:105]...) {
		x.EventID = fmt.Sprintf("nats-%d", i)
		viaNATS = append(viaNATS, x)
	}
	producer, _ := json.Marshal(viaNATS)
	_, err = e.js.Publish(ctx, streams.ProducerPrefix+tenant+".app", producer)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 10.0, stack.Sum(e.regs["partitioner"], "surge_partitioner_erased_events_dropped_total"))
	}, 30*time.Second, 50*time.Millisecond, "producer events refused")

	// ... and recorded as the tenant's erased_user problem, counted by
	// ingest and the partitioner.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		aggs, _, err := problems.Read(ctx, e.js, problems.Query{Tenant: tenant, Since: time.Now().Add(-time.Hour)})
		if !assert.NoError(c, err) {
			return
		}
		var n int64
		for _, a := range aggs {
			if a.Reason == problems.ReasonErasedUser {
				n += a.Count
			}
		}
		assert.GreaterOrEqual(c, n, int64(110))
	}, 30*time.Second, 100*time.Millisecond, "erased_user problems")

	close(stop)
	require.NoError(t, <-loadErr)
	t.Logf("load: %d events of kept users stored, %d of erased users sent", st.keptStored.Load(), st.erasedSent.Load())

	// Everything sent has landed: every kept event exactly once.
	keptLate := "SELECT count() FROM " + database + ".events WHERE (event_id LIKE 'p2-%' OR event_id LIKE 'late-kept-%' OR event_id LIKE 'nats-%') AND user_id NOT IN (" + erasedList() + ")"
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.uint(0, keptLate)
		assert.NoError(c, err)
		assert.Equal(c, uint64(st.keptStored.Load())+50+5, n)
	}, time.Minute, 100*time.Millisecond, "load landed")
	// ... on both replicas of each shard, so nothing is on its way.
	for i := range e.conns {
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			a, err := e.uint(i, "SELECT count() FROM "+database+".events_local")
			assert.NoError(c, err)
			b, err := e.uint(i^1, "SELECT count() FROM "+database+".events_local")
			assert.NoError(c, err)
			assert.Equal(c, a, b)
		}, 30*time.Second, 100*time.Millisecond)
	}

	for i := range e.conns {
		for _, final := range []string{"", " FINAL"} {
			q := "SELECT count() FROM " + database + ".events_local" + final + " WHERE user_id IN (" + erasedList() + ")"
			require.Zero(t, e.mustUint(i, q), "server %d%s: no row of an erased user", i, final)
		}
		got := stats{e.mustUint(i, fmt.Sprintf(keptQ, "count()")), e.mustUint(i, fmt.Sprintf(keptQ, "sum(cityHash64(event_id))"))}
		require.Equal(t, before[i], got, "server %d: the other users' rows unchanged", i)
		// Exactly one mutation per server, the kill notwithstanding: the
		// runner records the batch's name before it sends the mutation (a
		// kill before the record leaves no mutation: the resumed runner
		// names a new batch and sends it once), and before sending, the
		// resumed runner looks for the batch's marker on every replica of
		// the shard (the killed one had sent it to shard 0, maybe to
		// shard 1). A second would take an ALTER in flight at the kill that
		// shows in system.mutations only after the new process looked, and
		// that one takes the eraser lease only once the dead one's expired
		// (the TTL of the SURGE_LEASES bucket, seconds): not allowed here.
		muts := e.mustUint(i, "SELECT count() FROM system.mutations WHERE database = '"+database+"' AND position(command, 'erasure ') > 0")
		t.Logf("server %d: %d erasure mutation(s)", i, muts)
		require.Equal(t, uint64(1), muts, "server %d: one mutation", i)
		require.Zero(t, e.mustUint(i, "SELECT count() FROM system.mutations WHERE is_done = 0"), "server %d", i)
	}

	// Dead letters: only the kept users' events are left.
	require.Equal(t, map[string][]string{
		"mixed":       {user(5000)},
		"kept only":   {user(5001)},
		"mixed batch": {user(5002)},
	}, e.deadLetterUsers(ctx))

	// The audit record.
	r, err = store.Get(ctx, id)
	require.NoError(t, err)
	require.Equal(t, erasure.Verified, r.State)
	require.Equal(t, tenant, r.Tenant)
	require.Equal(t, erased, r.UserCount)
	require.Len(t, r.UserHashes, erased)
	require.Contains(t, r.UserHashes, erasure.UserHash(tenant, user(0)))
	require.Empty(t, r.Users, "no raw user id kept")
	require.Equal(t, 4, r.DeadLetters)
	require.False(t, r.VerifiedAt.IsZero())
	require.False(t, r.DeletedAt.Before(r.LandedAt))
	require.Len(t, r.RowsDeleted, 2)
	var rows uint64
	for _, n := range r.RowsDeleted {
		rows += n
	}
	// Phase 1's 2,000 rows at least; at most those and every event of
	// theirs sent after (in flight and load).
	require.GreaterOrEqual(t, rows, uint64(2*erased))
	require.LessOrEqual(t, rows, uint64(2*erased+erased)+uint64(st.erasedSent.Load()))
	t.Logf("rows deleted per ClickHouse shard: %v; dead letters: %d", r.RowsDeleted, r.DeadLetters)

	// The list as the admin endpoint answers it.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+ingest.ErasurePath+"/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var got erasure.Request
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
	require.Equal(t, erasure.Verified, got.State)

	e.eraseBefore(ctx, store)
}

// eraseBefore erases, for 10 users, only the events with a ts before
// 2026-01-01: those already stored and those sent after the request go,
// the later ones stay and keep flowing.
func (e *env) eraseBefore(ctx context.Context, store *erasure.Store) {
	t := e.t
	t.Helper()
	const old, recent = "2025-06-01T00:00:00Z", "2026-06-01T00:00:00Z"
	var list []string
	var events []ev
	for u := range 10 {
		list = append(list, fmt.Sprintf("b-%d", u))
		for i, ts := range []string{old, recent} {
			events = append(events, ev{EventID: fmt.Sprintf("b-%d-%d", u, i), UserID: list[u], Type: "b", TS: ts})
		}
	}
	n, err := e.post(ctx, events)
	require.NoError(t, err)
	require.Equal(t, 20, n)
	usersIn := "user_id LIKE 'b-%'"
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.uint(0, "SELECT count() FROM "+database+".events WHERE "+usersIn)
		assert.NoError(c, err)
		assert.Equal(c, uint64(20), n)
	}, 30*time.Second, 100*time.Millisecond)

	sub := erasure.Submission{Tenant: tenant, Users: list, Before: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	r, err := store.Submit(ctx, sub, time.Now())
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err := store.Get(ctx, r.ID)
		if assert.NoError(c, err) {
			assert.Equal(c, erasure.Verified, got.State, got.LastError)
		}
	}, time.Minute, 100*time.Millisecond, "verified")

	// Sent again with new ids: the old ones are refused, the recent stored.
	for i := range events {
		events[i].EventID += "-again"
	}
	n, err = e.post(ctx, events)
	require.NoError(t, err)
	require.Equal(t, 10, n, "only the events at or after the cut are stored")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := e.uint(0, "SELECT count() FROM "+database+".events WHERE "+usersIn)
		assert.NoError(c, err)
		assert.Equal(c, uint64(20), n)
	}, 30*time.Second, 100*time.Millisecond)
	for i := range e.conns {
		require.Zero(t, e.mustUint(i, "SELECT count() FROM "+database+".events_local FINAL WHERE "+usersIn+" AND ts < toDateTime('2026-01-01 00:00:00', 'UTC')"))
	}
	got, err := store.Get(ctx, r.ID)
	require.NoError(t, err)
	var rows uint64
	for _, n := range got.RowsDeleted {
		rows += n
	}
	require.Equal(t, uint64(10), rows, "the 10 old rows, counted before the mutation")
}

// submit posts an erasure request to ingest's admin route and returns its id.
func (e *env) submit(ctx context.Context, list []string) string {
	e.t.Helper()
	body, _ := json.Marshal(map[string]any{"tenant": tenant, "users": list})
	for _, key := range []string{"", "wrong-key-wrong-key", adminKey} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+ingest.ErasurePath, bytes.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(e.t, err)
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if key != adminKey {
			require.Equal(e.t, http.StatusUnauthorized, resp.StatusCode, "key %q", key)
			continue
		}
		require.Equal(e.t, http.StatusAccepted, resp.StatusCode, string(b))
		var r erasure.Request
		require.NoError(e.t, json.Unmarshal(b, &r))
		require.Equal(e.t, erased, r.UserCount)
		return r.ID
	}
	return ""
}
