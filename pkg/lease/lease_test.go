package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testTTL is the lease TTL of these tests: renewals every 667ms, a lease
// valid 1.5s after its last renewal.
const testTTL = 2 * time.Second

// ledger records which instance runs which shard, from the work
// callbacks, and every start that overlapped a run of another instance.
type ledger struct {
	mu       sync.Mutex
	running  map[int]string      // shard -> the instance running it
	started  map[int][]time.Time // shard -> start times
	overlaps []string
}

func newLedger() *ledger {
	return &ledger{running: make(map[int]string), started: make(map[int][]time.Time)}
}

// work is the callback of instance id: it records the run until ctx ends.
func (l *ledger) work(id string, also func(k int)) func(context.Context, int) {
	return func(ctx context.Context, k int) {
		l.mu.Lock()
		if other, ok := l.running[k]; ok {
			l.overlaps = append(l.overlaps, fmt.Sprintf("shard %d started on %s while %s runs it", k, id, other))
		}
		l.running[k] = id
		l.started[k] = append(l.started[k], time.Now())
		l.mu.Unlock()
		if also != nil {
			also(k)
		}
		<-ctx.Done()
		l.mu.Lock()
		if l.running[k] == id {
			delete(l.running, k)
		}
		l.mu.Unlock()
	}
}

// owners is each instance's running shards, ascending.
func (l *ledger) owners() map[string][]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]int)
	for _, k := range slices.Sorted(maps.Keys(l.running)) {
		out[l.running[k]] = append(out[l.running[k]], k)
	}
	return out
}

// lastStart is the last time shard k started.
func (l *ledger) lastStart(k int) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.started[k]
	return s[len(s)-1]
}

func (l *ledger) problems() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.overlaps)
}

// instance is an Owner run by a test on a connection of its own.
type instance struct {
	*Owner
	nc   *nats.Conn
	stop func() error // cancels Run and waits for it; idempotent
}

func startOwner(t *testing.T, url, id string, shards int, log *zap.Logger, work func(context.Context, int)) *instance {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	if log == nil {
		log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	o, err := NewOwner(js, Config{Service: "batcher", Instance: id, Shards: shards, TTL: testTTL}, log)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx, func(ctx context.Context, k int) error { work(ctx, k); return nil }) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("owner did not stop")
			}
		})
		return runErr
	}
	t.Cleanup(func() { assert.NoError(t, stop()) })
	return &instance{Owner: o, nc: nc, stop: stop}
}

// assertOwners waits until the running shards are exactly want and
// returns how long that took.
func assertOwners(t *testing.T, l *ledger, want map[string][]int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, want, l.owners())
	}, within, 20*time.Millisecond)
	return time.Since(start)
}

// TestSharesMovesAndNeverOverlaps runs three instances, stops one, kills
// one and adds one, and checks each shard always has one running owner,
// the spread is Assign's and the moves take a bounded time.
func TestSharesMovesAndNeverOverlaps(t *testing.T) {
	const shards = 8
	url := natstest.Start(t).ClientURL()
	l := newLedger()
	a := startOwner(t, url, "a", shards, nil, l.work("a", nil))
	b := startOwner(t, url, "b", shards, nil, l.work("b", nil))
	c := startOwner(t, url, "c", shards, nil, l.work("c", nil))
	want := Assign(shards, []string{"a", "b", "c"})
	require.Equal(t, map[string][]int{"a": {3, 7}, "b": {4, 5, 6}, "c": {0, 1, 2}}, want, "the spread of this hash")
	assertOwners(t, l, want, 10*time.Second)
	require.Equal(t, want["a"], a.Owned())
	holders, err := Holders(t.Context(), a.js, "batcher", shards)
	require.NoError(t, err)
	require.Equal(t, want, holders, "the bucket, read from outside")
	require.Equal(t, want["b"], b.Owned())

	// A clean stop hands its shards over at once: the others take them
	// at their next round.
	require.NoError(t, c.stop())
	took := assertOwners(t, l, Assign(shards, []string{"a", "b"}), 5*time.Second)
	t.Logf("shards of a stopped instance moved in %s", took)
	require.Less(t, took, testTTL/3+time.Second)
	require.Len(t, a.Owned(), 4)

	// A dead instance renews nothing: its shards move once its keys
	// expire, within the TTL and a round of the survivor.
	b.nc.Close()
	took = assertOwners(t, l, Assign(shards, []string{"a"}), 10*time.Second)
	t.Logf("shards of a dead instance moved in %s", took)
	require.Less(t, took, testTTL+testTTL/3+time.Second)
	require.Greater(t, took, testTTL/2, "no takeover before the dead one's lease runs out")

	// A join takes its share from the others.
	start := time.Now()
	_ = startOwner(t, url, "d", shards, nil, l.work("d", nil))
	assertOwners(t, l, Assign(shards, []string{"a", "d"}), 10*time.Second)
	t.Logf("a joining instance got its share in %s", time.Since(start))
	require.Less(t, time.Since(start), 2*testTTL)

	require.NoError(t, a.stop())
	assertOwners(t, l, Assign(shards, []string{"d"}), 5*time.Second)
	require.Empty(t, l.problems())
	require.Empty(t, a.Owned())
}

// TestFencesAFrozenOwner freezes an owner's connection (a paused process,
// a partition): it loses Holds before a contender can win, its shards'
// work stops, and once the connection thaws its renewals are refused.
func TestFencesAFrozenOwner(t *testing.T) {
	const shards = 4
	url := natstest.Start(t).ClientURL()
	p := startProxy(t, url)
	l := newLedger()
	core, logs := observer.New(zapcore.InfoLevel)
	a := startOwner(t, p.url(), "a", shards, zap.New(core), l.work("a", nil))
	assertOwners(t, l, map[string][]int{"a": {0, 1, 2, 3}}, 10*time.Second)

	p.freeze()
	frozen := time.Now()
	var mu sync.Mutex
	var heldByA []int // shards a still held when b started them
	b := startOwner(t, url, "b", shards, nil, l.work("b", func(k int) {
		if a.Holds(k) {
			mu.Lock()
			heldByA = append(heldByA, k)
			mu.Unlock()
		}
	}))
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		for k := range shards {
			assert.False(c, a.Holds(k))
		}
	}, testTTL, 10*time.Millisecond)
	lostHolds := time.Since(frozen)
	assertOwners(t, l, map[string][]int{"b": {0, 1, 2, 3}}, 10*time.Second)
	t.Logf("frozen owner lost Holds within %s; the contender won in %s", lostHolds, time.Since(frozen))
	for k := range shards {
		// a renewed at most a third of the TTL before the freeze.
		require.Greater(t, l.lastStart(k).Sub(frozen), testTTL-testTTL/3, "shard %d taken before a's key expired", k)
	}
	require.Equal(t, []int{0, 1, 2, 3}, b.Owned())

	// Thawed, a's renewals (the stale ones in the socket, then its next
	// round's) carry revisions b has overwritten: refused, each shard lost.
	p.thaw()
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, shards, logs.FilterMessage("lease lost; shard stopped").FilterField(zap.String("reason", "renewal refused: another instance holds the key")).Len())
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, shards, logs.FilterMessage("lease ran out without renewal; shard stopped").Len())
	// Then they share again.
	assertOwners(t, l, Assign(shards, []string{"a", "b"}), 10*time.Second)
	mu.Lock()
	require.Empty(t, heldByA)
	mu.Unlock()
	require.Empty(t, l.problems())
}

// TestValidate reports every problem of a Config.
func TestValidate(t *testing.T) {
	err := Config{Service: "bad.name", Instance: "", Shards: 0, TTL: time.Millisecond, Replicas: 7}.Validate()
	for _, want := range []string{
		`lease service "bad.name" must be`, `lease instance "" must be`, "lease shards must be 1 to 65535, got 0",
		"lease ttl must be at least 1s, got 1ms", "lease replicas must be 0 to 5, got 7",
	} {
		require.ErrorContains(t, err, want)
	}
	require.NoError(t, Config{Service: "sink", Instance: NewInstanceID(), Shards: 8, TTL: time.Second}.Validate())
	require.NotEqual(t, NewInstanceID(), NewInstanceID())
}

// proxy forwards TCP connections to a NATS server and can freeze them:
// bytes sent meanwhile wait in the proxy and arrive when it thaws.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	open  chan struct{} // closed while traffic flows
	conns []net.Conn
}

func startProxy(t *testing.T, natsURL string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	u := natsURL[len("nats://"):]
	p := &proxy{ln: ln, target: u, open: make(chan struct{})}
	close(p.open)
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.thaw()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(out, in) })
		p.wg.Go(func() { p.pipe(in, out) })
	}
}

// pipe copies from src to dst, holding each chunk while frozen.
func (p *proxy) pipe(dst, src net.Conn) {
	defer func() { _ = dst.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			open := p.open
			p.mu.Unlock()
			<-open
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = src.Close()
			}
			return
		}
	}
}

func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default:
	}
}

func (p *proxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// TestKeepsALeaseWhoseRenewalAnswerWasLost writes an owner's key as its
// own renewal would (the write landed, its answer was lost): the owner's
// next renewal is refused for the revision, finds its own name in the
// key, and keeps the shard running without a restart.
func TestKeepsALeaseWhoseRenewalAnswerWasLost(t *testing.T) {
	url := natstest.Start(t).ClientURL()
	l := newLedger()
	core, logs := observer.New(zapcore.InfoLevel)
	a := startOwner(t, url, "a", 1, zap.New(core), l.work("a", nil))
	assertOwners(t, l, map[string][]int{"a": {0}}, 10*time.Second)

	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	kv, err := js.KeyValue(t.Context(), Bucket)
	require.NoError(t, err)
	e, err := kv.Get(t.Context(), "batcher.shard.0")
	require.NoError(t, err)
	require.Equal(t, "a", string(e.Value()))
	rev, err := kv.Update(t.Context(), "batcher.shard.0", []byte("a"), e.Revision())
	require.NoError(t, err)

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 1, logs.FilterMessage("lease renewal's answer was lost; kept the lease at the key's revision").Len())
	}, 3*testTTL, 10*time.Millisecond)
	// Renewed again from the adopted revision.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		e, err := kv.Get(t.Context(), "batcher.shard.0")
		if assert.NoError(c, err) {
			assert.Greater(c, e.Revision(), rev)
			assert.Equal(c, "a", string(e.Value()))
		}
	}, 3*testTTL, 10*time.Millisecond)
	require.Zero(t, logs.FilterMessage("lease lost; shard stopped").Len())
	require.Zero(t, logs.FilterMessage("lease ran out without renewal; shard stopped").Len())
	require.True(t, a.Holds(0))
	l.mu.Lock()
	starts := len(l.started[0])
	l.mu.Unlock()
	require.Equal(t, 1, starts, "the shard's work never restarted")
	require.Empty(t, l.problems())
}
