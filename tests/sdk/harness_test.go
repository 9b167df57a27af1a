// Package sdk drives the real analytics SDKs of Segment and RudderStack,
// installed from npm at the versions package-lock.json pins, against
// Surge's Segment-compatible API on a real pipeline (embedded NATS
// JetStream, clickhouse-server, the four services) and checks what lands
// in ClickHouse.
package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
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

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/chaudit"
	"github.com/surge-events/surge/services/ingest"
	"github.com/surge-events/surge/tools/stack"
)

var (
	npmOnce sync.Once
	npmDir  string
	npmErr  error
)

// sdkDir returns a folder holding send.cjs and the SDKs, installed with
// `npm ci` from package-lock.json into a temporary copy of this folder
// (npm's own cache makes later runs offline). TestMain removes it.
func sdkDir(t *testing.T) string {
	t.Helper()
	npmOnce.Do(func() {
		if _, err := exec.LookPath("node"); err != nil {
			npmErr = errors.New("node is not installed; `surge setup` installs Debian's nodejs and npm")
			return
		}
		if npmDir, npmErr = os.MkdirTemp("", "surge-sdk-"); npmErr != nil {
			return
		}
		for _, f := range []string{"package.json", "package-lock.json", "send.cjs"} {
			b, err := os.ReadFile(f)
			if err != nil {
				npmErr = err
				return
			}
			if npmErr = os.WriteFile(filepath.Join(npmDir, f), b, 0o644); npmErr != nil {
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts")
		cmd.Dir = npmDir
		if out, err := cmd.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci: %w\n%s", err, out)
		}
	})
	require.NoError(t, npmErr)
	return npmDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if npmDir != "" {
		_ = os.RemoveAll(npmDir)
	}
	os.Exit(code)
}

// job is what send.cjs reads.
type job struct {
	SDK           string           `json:"sdk"`
	Host          string           `json:"host"`
	WriteKey      string           `json:"writeKey"`
	Messages      []map[string]any `json:"messages"`
	FlushAt       int              `json:"flushAt,omitempty"`
	ClockOffsetMs int64            `json:"clockOffsetMs,omitempty"`
	Gzip          *bool            `json:"gzip,omitempty"`
	Options       map[string]any   `json:"options,omitempty"`
}

// outcome is what send.cjs reports: messages the SDK says it delivered
// and those it gave up on.
type outcome struct {
	Delivered int      `json:"delivered"`
	Failed    int      `json:"failed"`
	Errors    []string `json:"errors"`
}

// send runs the SDK on j in a node process and returns its outcome.
func send(t *testing.T, j job) outcome {
	t.Helper()
	o, err := runNode(t.Context(), sdkDir(t), j)
	require.NoError(t, err)
	return o
}

// sendInBackground starts send on j and returns a function that waits
// for its outcome, so the test can act on ingest meanwhile.
func sendInBackground(t *testing.T, j job) (wait func() outcome) {
	t.Helper()
	type result struct {
		o   outcome
		err error
	}
	done := make(chan result, 1)
	dir := sdkDir(t)
	go func() {
		o, err := runNode(t.Context(), dir, j)
		done <- result{o, err}
	}()
	return func() outcome {
		t.Helper()
		res := <-done
		require.NoError(t, res.err)
		return res.o
	}
}

// answered is how many requests an ingest (its registry reg) answered
// with the status code.
func answered(t *testing.T, reg *prometheus.Registry, code string) float64 {
	t.Helper()
	n, err := metric(reg, "surge_ingest_requests_total", map[string]string{"code": code})
	require.NoError(t, err)
	return n
}

// untilAnswered waits, at most a minute, until an ingest answered at
// least n requests with the status code.
func untilAnswered(t *testing.T, reg *prometheus.Registry, code string, n float64) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err := metric(reg, "surge_ingest_requests_total", map[string]string{"code": code})
		if assert.NoError(c, err) {
			assert.GreaterOrEqual(c, got, n)
		}
	}, time.Minute, 10*time.Millisecond, "requests answered %s", code)
}

// runNode is send returning its problems, for use off the test goroutine.
func runNode(ctx context.Context, dir string, j job) (outcome, error) {
	in, err := json.Marshal(j)
	if err != nil {
		return outcome{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "send.cjs")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return outcome{}, fmt.Errorf("node send.cjs: %w: %s", err, stderr.String())
	}
	var o outcome
	if err := json.Unmarshal(stdout.Bytes(), &o); err != nil {
		return outcome{}, fmt.Errorf("output %q (stderr %s): %w", stdout.String(), stderr.String(), err)
	}
	return o, nil
}

const shards = 4

// pipeline is one running stack shared by the tests, with its write keys.
type pipeline struct {
	st   *stack.Stack
	ch   driver.Conn
	js   jetstream.JetStream
	keys map[string]string // write key -> tenant
	// chHTTP is the HTTP address of every ClickHouse server.
	chHTTP []string
}

// writeKey returns the write key of a tenant, registered before the stack starts.
func writeKey(tenant string) string { return "wk-" + tenant }

func startPipeline(t *testing.T, tenants ...string) *pipeline {
	t.Helper()
	keys := map[string]string{}
	for _, tn := range tenants {
		keys[writeKey(tn)] = tn
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{
		Dir: t.TempDir(), Shards: shards, ClickHouseServers: 1, NATSPort: -1, APIKeys: keys,
		Policy: batch.Policy{MaxRows: 5000, MaxBytes: 8 << 20, MaxAge: 200 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Stop()) })

	ch, err := clickhouse.Open(&clickhouse.Options{Addr: st.ClickHouse.Addrs()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ch.Close() })
	nc, err := nats.Connect(st.NATS.ClientURL(), nats.UserInfo(st.NATSAuth.User, st.NATSAuth.Password))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	p := &pipeline{st: st, ch: ch, js: js, keys: keys}
	for _, srv := range st.ClickHouse.Servers {
		p.chHTTP = append(p.chHTTP, srv.HTTPAddr())
	}
	// The audit of inserts (chaudit), before any event is sent.
	require.NoError(t, chaudit.Install(ctx, p.chHTTP, st.Database))
	return p
}

// row is one stored event.
type row struct {
	EventID, UserID, Type string
	TS                    time.Time
	Properties            map[string]any
}

// rows waits until the pipeline is idle (INGEST and BATCHES hold nothing
// and ClickHouse holds every shard's last EVENTS message, so every accepted
// event is in ClickHouse) and returns the tenant's rows by event id; an
// event stored twice fails the test, and so does one the audit of inserts
// (chaudit) does not count exactly once: events_local is a
// ReplacingMergeTree, whose merges may fold a doubled insert before the
// rows are read.
func (p *pipeline) rows(t *testing.T, tenant string) map[string]row {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.NoError(c, p.idle(t.Context()))
	}, time.Minute, 50*time.Millisecond)

	q, err := p.ch.Query(t.Context(), fmt.Sprintf(
		"SELECT event_id, user_id, type, ts, properties FROM %s.events WHERE tenant = ?", p.st.Database), tenant)
	require.NoError(t, err)
	defer q.Close()
	out := map[string]row{}
	for q.Next() {
		var r row
		var props string
		require.NoError(t, q.Scan(&r.EventID, &r.UserID, &r.Type, &r.TS, &props))
		require.NoError(t, json.Unmarshal([]byte(props), &r.Properties))
		_, dup := out[r.EventID]
		require.False(t, dup, "event %s stored twice", r.EventID)
		out[r.EventID] = r
	}
	require.NoError(t, q.Err())
	inserted, err := chaudit.Inserted(p.chHTTP, p.st.Database, tenant)
	require.NoError(t, err)
	require.NoError(t, chaudit.Compare(inserted, out).Err(), "tenant %s", tenant)
	return out
}

// idle returns why the pipeline is not idle, nil when it is.
func (p *pipeline) idle(ctx context.Context) error {
	for _, name := range []string{streams.Ingest, streams.Batches} {
		s, err := p.js.Stream(ctx, name)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs > 0 {
			return fmt.Errorf("%s holds %d messages", name, info.State.Msgs)
		}
	}
	events, err := p.js.Stream(ctx, streams.Events)
	if err != nil {
		return err
	}
	for k := range shards {
		last, err := events.GetLastMsgForSubject(ctx, streams.EventsSubject(k))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		var stored uint64
		q := fmt.Sprintf("SELECT max(seq) FROM %s.events WHERE shard = ?", p.st.Database)
		if err := p.ch.QueryRow(ctx, q, k).Scan(&stored); err != nil {
			return err
		}
		if stored < last.Sequence {
			return fmt.Errorf("shard %d: EVENTS at %d, ClickHouse at %d", k, last.Sequence, stored)
		}
	}
	return nil
}

// ingestSeq is INGEST's last sequence: unchanged when nothing was stored.
func (p *pipeline) ingestSeq(t *testing.T) uint64 {
	t.Helper()
	s, err := p.js.Stream(t.Context(), streams.Ingest)
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	return info.State.LastSeq
}

// deadLetters returns the dead letters ingest made for tenant.
func (p *pipeline) deadLetters(t *testing.T, tenant string) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := p.js.Stream(t.Context(), streams.DeadLetter)
	require.NoError(t, err)
	var out []*jetstream.RawStreamMsg
	subject := "deadletter.ingest.invalid." + tenant
	info, err := s.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	require.NoError(t, err)
	seq := uint64(0)
	for range info.State.Subjects[subject] {
		m, err := s.GetMsg(t.Context(), seq+1, jetstream.WithGetMsgSubject(subject))
		require.NoError(t, err)
		out = append(out, m)
		seq = m.Sequence
	}
	return out
}

// startIngest runs a second ingest on the stack's NATS, configured by
// mutate, and returns it with its metrics registry.
func (p *pipeline) startIngest(t *testing.T, mutate func(*ingest.Config)) (*ingest.Service, *prometheus.Registry) {
	t.Helper()
	cfg := ingest.DefaultConfig()
	cfg.NATS = p.st.NATSAuth
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Ingest.APIKeys = p.keys
	mutate(&cfg)
	reg := prometheus.NewRegistry()
	svc, err := ingest.New(cfg, service.Deps{Logger: zap.NewNop(), Registry: reg, TracerProvider: noop.NewTracerProvider()})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := http.Get("http://" + svc.AdminAddr() + "/readyz")
		if assert.NoError(c, err) {
			_ = resp.Body.Close()
			assert.Equal(c, http.StatusOK, resp.StatusCode)
		}
	}, 30*time.Second, 20*time.Millisecond)
	return svc, reg
}

// metric is the value of a gauge or counter in reg (0 when absent) whose
// labels include those given.
func metric(reg *prometheus.Registry, name string, labels map[string]string) (float64, error) {
	families, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == k && l.GetValue() == v)
				}
				if !found {
					continue metrics
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue(), nil
			}
			return m.GetGauge().GetValue(), nil
		}
	}
	return 0, nil
}

// responseDropper is a TCP proxy in front of an address that forwards
// every request and, for the first `drop` connections that answer, throws
// the answer away and resets the client's connection: the server has done
// the work (stored the events), the client never hears of it.
type responseDropper struct {
	ln      net.Listener
	target  string
	drop    atomic.Int64
	dropped atomic.Int64
	wg      sync.WaitGroup
}

func startDropper(t *testing.T, target string, drop int) *responseDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	d := &responseDropper{ln: ln, target: target}
	d.drop.Store(int64(drop))
	d.wg.Add(1)
	go d.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		d.wg.Wait()
	})
	return d
}

func (d *responseDropper) URL() string { return "http://" + d.ln.Addr().String() }

func (d *responseDropper) accept() {
	defer d.wg.Done()
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return // closed
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.serve(c.(*net.TCPConn))
		}()
	}
}

func (d *responseDropper) serve(client *net.TCPConn) {
	server, err := net.Dial("tcp", d.target)
	if err != nil {
		_ = client.Close()
		return
	}
	requests := make(chan struct{})
	go func() {
		defer close(requests)
		_, _ = io.Copy(server, client)
		_ = server.(*net.TCPConn).CloseWrite()
	}()
	defer func() {
		_ = client.Close()
		_ = server.Close()
		<-requests
	}()
	first := make([]byte, 32<<10)
	n, err := server.Read(first) // the first answer: the request was handled
	if err != nil {
		return
	}
	if d.drop.Add(-1) >= 0 {
		d.dropped.Add(1)
		_ = client.SetLinger(0) // reset, as a lost connection would
		return
	}
	if _, err := client.Write(first[:n]); err != nil {
		return
	}
	_, _ = io.Copy(client, server)
}

// switchProxy is a TCP proxy whose link can be cut: Cut resets every open
// connection and resets new ones at once, until Restore. In front of NATS
// it makes an ingest lose JetStream the way a network fault would.
type switchProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startSwitchProxy(t *testing.T, target string) *switchProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &switchProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *switchProxy) Addr() string { return p.ln.Addr().String() }

// Cut resets every connection and every new one until Restore.
func (p *switchProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	}
}

// Restore lets connections through again.
func (p *switchProxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// track registers c, or reports false (and closes it) while cut.
func (p *switchProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *switchProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *switchProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(client) {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(client)
			defer client.Close()
			server, err := net.Dial("tcp", p.target)
			if err != nil {
				return
			}
			if !p.track(server) {
				return
			}
			defer p.untrack(server)
			defer server.Close()
			upstream := make(chan struct{})
			go func() {
				defer close(upstream)
				_, _ = io.Copy(server, client)
				_ = server.Close()
			}()
			_, _ = io.Copy(client, server)
			_ = client.Close()
			<-upstream
		}()
	}
}
