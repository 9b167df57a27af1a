package partitioner

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeFetcher stands for a tenant's consumer: the scheduler only hands it
// to the workers.
type fakeFetcher struct {
	fetcher
	name string
}

// clockScheduler is a scheduler on a clock the test moves.
func clockScheduler(idle time.Duration, coldMax int) (*scheduler, *time.Time) {
	now := time.Unix(1000, 0)
	s := newScheduler(idle, coldMax)
	s.now = func() time.Time { return now }
	return s, &now
}

// hot makes tenants known with their consumer, and hot (discovery saw
// messages of them).
func hot(s *scheduler, names ...string) {
	for _, n := range names {
		if !s.known(n) {
			s.setConsumer(n, &fakeFetcher{name: n})
		}
		s.pending(n, 0)
	}
}

// turns takes n turns, each reported done with what got says the tenant
// had (default: a full batch), and returns the tenants in turn order.
func turns(t *testing.T, s *scheduler, n int, got map[string]int) []string {
	t.Helper()
	var out []string
	for range n {
		tr, ok := s.pick()
		require.True(t, ok)
		out = append(out, tr.t.name)
		k, set := got[tr.t.name]
		if !set {
			k = 10
		}
		s.done(tr, k, false)
	}
	return out
}

func TestSchedulerServesHotTenantsRoundRobin(t *testing.T) {
	s, _ := clockScheduler(time.Minute, 4)
	hot(s, "A")
	tr, ok := s.pick()
	require.True(t, ok)
	require.True(t, tr.wait, "one tenant alone waits to fill its batch, as before")
	require.False(t, tr.poll)
	require.Same(t, tr.cons.(*fakeFetcher), s.consumer("A"))
	s.done(tr, 10, false)

	// B arrives while A has a backlog: from now on every other turn is
	// B's, and no turn waits on a tenant.
	hot(s, "B")
	require.Equal(t, []string{"A", "B"}, s.hotNames())
	tr, ok = s.pick()
	require.True(t, ok)
	require.Equal(t, "A", tr.t.name)
	require.False(t, tr.wait, "with two tenants with work a turn takes only what is there")
	s.done(tr, 10, false)
	require.Equal(t, []string{"B", "A", "B", "A"}, turns(t, s, 4, nil))

	// C is discovered: it takes its turn within one round.
	hot(s, "C")
	require.Equal(t, []string{"B", "C", "A", "B", "C", "A"}, turns(t, s, 6, nil))

	// Discovery seeing A again changes nothing: it keeps its place.
	hot(s, "A")
	require.Equal(t, []string{"B", "C", "A"}, s.hotNames())
}

// A tenant whose turn brings nothing leaves the ring; when none has work
// the workers long-poll the cold ones, most recent ones, each in turn,
// and ask discovery for a round.
func TestSchedulerLongPollsColdTenantsWhenNoneHasWork(t *testing.T) {
	s, now := clockScheduler(time.Minute, 2)
	hot(s, "A", "B", "C")
	require.Equal(t, []string{"A", "B", "C", "B"}, turns(t, s, 4, map[string]int{"A": 0, "C": 0}))
	require.Equal(t, []string{"B"}, s.hotNames())

	// B's turn brings nothing either: every tenant is cold. Only the
	// coldMax most recently active stay, B and C; A is forgotten.
	*now = now.Add(time.Second)
	tr, ok := s.pick()
	require.True(t, ok)
	s.done(tr, 0, false)
	require.Empty(t, s.hotNames())
	require.False(t, s.known("A"))

	for _, want := range []string{"C", "B", "C"} {
		tr, ok := s.take(t.Context(), time.Hour)
		require.True(t, ok)
		require.Equal(t, want, tr.t.name)
		require.True(t, tr.wait)
		require.True(t, tr.poll)
		select {
		case <-s.kick:
		default:
			t.Fatal("a worker with no tenant with work asks for discovery")
		}
	}

	// A long poll that brings messages makes the tenant hot again.
	tr, ok = s.pick()
	require.True(t, ok)
	s.done(tr, 3, false)
	require.Equal(t, []string{tr.t.name}, s.hotNames())
}

// Cold tenants are forgotten idle after their last message, so the
// server removes their consumers; a failed fetch changes nothing.
func TestSchedulerForgetsIdleTenants(t *testing.T) {
	s, now := clockScheduler(time.Minute, 4)
	hot(s, "A", "B")
	tr, _ := s.pick() // A
	s.done(tr, 0, true)
	require.Equal(t, []string{"B", "A"}, s.hotNames(), "a failed fetch keeps the tenant where it is")
	*now = now.Add(30 * time.Second)
	require.Equal(t, []string{"B", "A"}, turns(t, s, 2, map[string]int{"A": 0})) // B's last message is now
	require.Equal(t, []string{"B"}, turns(t, s, 1, map[string]int{"B": 0}))
	require.Empty(t, s.hotNames())

	*now = now.Add(30 * time.Second) // A's last message a minute ago, B's 30 s
	tr, ok := s.pick()
	require.True(t, ok)
	require.Equal(t, "B", tr.t.name)
	require.False(t, s.known("A"))
	*now = now.Add(30 * time.Second)
	_, ok = s.pick()
	require.False(t, ok)
	require.False(t, s.known("B"))

	// A worker holding a forgotten tenant's turn changes nothing.
	s.done(tr, 5, false)
	require.Empty(t, s.hotNames())

	// With no tenant known, take waits for one to turn hot.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, ok = s.take(ctx, time.Hour)
	require.False(t, ok)
	hot(s, "C")
	tr, ok = s.take(t.Context(), time.Hour)
	require.True(t, ok, "woken by C")
	require.Equal(t, "C", tr.t.name)
}

// pending measures how long discovery has seen a tenant's messages
// without a fetch bringing any, for the per-tenant stall check.
func TestSchedulerMeasuresHowLongMessagesWait(t *testing.T) {
	s, now := clockScheduler(time.Minute, 4)
	hot(s, "A", "B")
	*now = now.Add(10 * time.Second)
	require.Equal(t, 10*time.Second, s.pending("A", 1))
	turns(t, s, 1, nil) // A's turn brings messages
	require.Zero(t, s.pending("A", 1))
	require.Equal(t, 10*time.Second, s.pending("B", 1))
	*now = now.Add(5 * time.Second)
	s.setConsumer("B", &fakeFetcher{name: "B2"}) // recreated: its clock starts again
	require.Zero(t, s.pending("B", 1))
	require.Equal(t, "B2", s.consumer("B").(*fakeFetcher).name)
}

// fakeHold is back-pressure the test turns on and off.
type fakeHold struct {
	on      atomic.Bool
	release chan struct{}
}

func (h *fakeHold) holding() bool { return h.on.Load() }

func (h *fakeHold) released() <-chan struct{} { return h.release }

// TestHoldServesTenantsWithoutBacklog: while the sinks are behind, a
// tenant with more than a turn of messages waiting takes no turn, and one
// with at most a turn, or none (long-polled cold), goes on; the hold's end
// wakes a worker with nothing to do, and every tenant takes turns again.
func TestHoldServesTenantsWithoutBacklog(t *testing.T) {
	s, _ := clockScheduler(time.Minute, 4)
	h := &fakeHold{release: make(chan struct{})}
	s.holdBacklogs(h, 10)
	hot(s, "A", "B")
	s.backlogs(map[string]uint64{"A": 2000, "B": 3})
	require.Equal(t, []string{"A", "B", "A", "B"}, turns(t, s, 4, nil), "no hold: round-robin")

	h.on.Store(true)
	require.Equal(t, []string{"B", "B", "B"}, turns(t, s, 3, map[string]int{"B": 1}), "A's backlog is held back")
	// B fetched its 3 and brought nothing more: cold, long-polled, while
	// A stays hot and held.
	tr, ok := s.pick()
	require.True(t, ok)
	require.Equal(t, "B", tr.t.name)
	s.done(tr, 0, false)
	tr, ok = s.pick()
	require.True(t, ok)
	require.Equal(t, "B", tr.t.name)
	require.True(t, tr.poll, "a tenant without work is long-polled during a hold")
	s.done(tr, 0, false)

	// A fetched down to one turn is no backlog any more.
	s.backlogs(map[string]uint64{"A": 10})
	tr, ok = s.pick()
	require.True(t, ok)
	require.Equal(t, "A", tr.t.name)
	s.done(tr, 10, false)

	// Only A has work, and a backlog again: nothing to take until the
	// hold ends, which wakes the waiting worker at once.
	s.backlogs(map[string]uint64{"A": 500})
	s.forget(s.tenants["B"])
	taken := make(chan bool, 1)
	go func() {
		_, ok := s.take(context.Background(), time.Hour)
		taken <- ok
	}()
	close(h.release)
	select {
	case ok := <-taken:
		require.False(t, ok, "the wait ends empty-handed")
	case <-time.After(10 * time.Second):
		t.Fatal("the end of the hold did not wake the waiting worker")
	}
	h.on.Store(false)
	tr, ok = s.pick()
	require.True(t, ok)
	require.Equal(t, "A", tr.t.name, "the hold over, A takes its turn")
}

// TestFetchesDrainTheBacklog: a tenant's backlog counts down by what its
// turns fetch, so it goes on once it is down to a turn, before the next
// discovery round.
func TestFetchesDrainTheBacklog(t *testing.T) {
	s, _ := clockScheduler(time.Minute, 4)
	h := &fakeHold{release: make(chan struct{})}
	h.on.Store(true)
	s.holdBacklogs(h, 10)
	hot(s, "A", "B")
	s.backlogs(map[string]uint64{"A": 25, "B": 0})
	h.on.Store(false)
	require.Equal(t, []string{"A", "B"}, turns(t, s, 2, map[string]int{"A": 10, "B": 1}))
	h.on.Store(true)
	require.Equal(t, []string{"B"}, turns(t, s, 1, map[string]int{"B": 1}), "A: 15 waiting, more than a turn")
	h.on.Store(false)
	require.Equal(t, []string{"A", "B"}, turns(t, s, 2, map[string]int{"A": 5, "B": 1}))
	h.on.Store(true)
	require.Equal(t, []string{"A", "B", "A"}, turns(t, s, 3, map[string]int{"A": 5, "B": 1}), "A: 10 waiting, one turn")
}

// fakePacer is the tenants' quotas as the test sets them: a tenant
// without a room has no limit.
type fakePacer struct {
	mu      sync.Mutex
	wait    map[string]time.Duration
	rooms   map[string]float64
	charged map[string]int
	waits   []string
}

func newFakePacer() *fakePacer {
	return &fakePacer{wait: map[string]time.Duration{}, rooms: map[string]float64{}, charged: map[string]int{}}
}

func (p *fakePacer) room(tenant string) (time.Duration, float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.rooms[tenant]
	if !ok {
		return 0, math.Inf(1)
	}
	return p.wait[tenant], r
}

func (p *fakePacer) charge(tenant string, events, _ int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.charged[tenant] += events
	if _, ok := p.rooms[tenant]; ok {
		p.rooms[tenant] = max(p.rooms[tenant]-float64(events), 0)
	}
}

func (p *fakePacer) waiting(tenant string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waits = append(p.waits, tenant)
}

func (p *fakePacer) set(tenant string, wait time.Duration, room float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.wait[tenant], p.rooms[tenant] = wait, room
}

func TestSchedulerSizesAPacedTenantsTurnsByItsQuota(t *testing.T) {
	s, _ := clockScheduler(time.Minute, 4)
	p := newFakePacer()
	s.paceBy(p, 10)
	p.set("A", 0, 1000)
	hot(s, "A", "B")

	// A's first turn learns its events per message: one message.
	tr, ok := s.pick()
	require.True(t, ok)
	require.Equal(t, "A", tr.t.name)
	require.Equal(t, 1, tr.size, "the first turn of a paced tenant")
	s.charged(tr, 1, 100, 5000)
	s.done(tr, 1, false)
	require.Equal(t, 100, p.charged["A"])

	tr, _ = s.pick()
	require.Equal(t, "B", tr.t.name)
	require.Equal(t, 10, tr.size, "a tenant without a limit takes fetch_batch")
	s.charged(tr, 10, 500, 0)
	s.done(tr, 10, false)

	// 950 events of room at 100 a message: 9 messages, reserved until
	// charged, so a second worker takes no turn of A meanwhile.
	p.set("A", 0, 950)
	tr, _ = s.pick()
	require.Equal(t, "A", tr.t.name)
	require.Equal(t, 9, tr.size)
	for range 2 {
		other, _ := s.pick()
		require.Equal(t, "B", other.t.name, "A's room is reserved by its turn under way")
		s.done(other, 10, false)
	}
	s.charged(tr, 9, 900, 0)
	s.done(tr, 9, false)
	p.set("A", 0, 10000)
	tr, _ = s.pick()
	require.Equal(t, "A", tr.t.name)
	require.Equal(t, 10, tr.size, "no more than fetch_batch however much room")
	s.done(tr, 0, false) // nothing there: A turns cold
	require.Equal(t, []string{"B"}, s.hotNames())
}

func TestSchedulerPassesOverATenantWaitingForItsQuota(t *testing.T) {
	s, now := clockScheduler(time.Minute, 4)
	p := newFakePacer()
	s.paceBy(p, 10)
	hot(s, "A", "B")
	p.set("A", 20*time.Millisecond, 0)

	for range 3 {
		tr, ok := s.pick()
		require.True(t, ok)
		require.Equal(t, "B", tr.t.name, "A's quota is in debt")
		s.done(tr, 10, false)
	}
	require.Equal(t, []string{"A"}, p.waits, "one wait counted, not one per pick")

	// A's messages have waited a minute, for its quota: no stall of its
	// consumer.
	*now = now.Add(time.Minute)
	tr, _ := s.pick()
	require.Equal(t, "B", tr.t.name)
	s.done(tr, 0, false) // B turns cold
	require.Zero(t, s.pending("A", 5), "the stall clock of a paced tenant starts again")

	// Only A is hot and it waits: take waits until its quota has room
	// (20 ms, not the hour), and says the wait is the quotas'.
	_, ok, soonest := s.pickPaced()
	require.False(t, ok)
	require.Equal(t, 20*time.Millisecond, soonest)
	_, ok = s.take(t.Context(), time.Hour)
	require.False(t, ok)
	require.Contains(t, p.waits, "", "the watchdog told that the wait is the quotas'")

	p.set("A", 0, 500)
	tr, ok = s.pick()
	require.True(t, ok)
	require.Equal(t, "A", tr.t.name)
	require.Equal(t, []string{"A", ""}, p.waits[:2])
}
