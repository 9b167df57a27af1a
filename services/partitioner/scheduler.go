package partitioner

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// fetcher is what a worker needs of a tenant's consumer.
type fetcher interface {
	Fetch(batch int, opts ...jetstream.FetchOpt) (jetstream.MessageBatch, error)
	FetchNoWait(batch int) (jetstream.MessageBatch, error)
}

// tenant is one tenant's consumer as the scheduler sees it. Its fields are
// guarded by the scheduler's mutex.
type tenant struct {
	name string
	cons fetcher
	hot  bool // in the ring: its last fetch brought messages, or discovery saw some
	cold bool // in the cold list: its last fetch brought none
	// lastMsg is when a fetch last brought messages (or the tenant became
	// known): a cold tenant is forgotten idle after it.
	lastMsg time.Time
	// waitingSince is when discovery first saw messages of the tenant that
	// no fetch has brought since; zero when none wait.
	waitingSince time.Time
	// backlog is how many of its messages INGEST held at the last
	// discovery round, less those fetched since.
	backlog uint64
}

// turn is one fetch a worker makes: from tenant t, waiting up to
// fetch_max_wait for the batch to fill (wait), or taking only what is
// there (FetchNoWait) when other tenants have work too.
type turn struct {
	t    *tenant
	cons fetcher
	wait bool
	// poll is a long poll of a cold tenant: no tenant is known to have
	// work.
	poll bool
}

// scheduler hands the workers their turns, round-robin over the tenants
// with work, so that one tenant's backlog delays another's messages by
// at most a round of turns (each at most fetch_batch messages), never by
// the backlog itself.
//
//   - Hot tenants (work known) form a ring; each turn takes the next one.
//     While only one tenant is hot a turn waits to fill its batch, as the
//     single shared consumer did: one tenant alone runs as fast as before.
//     With several hot tenants a turn takes only what is there, so no
//     worker waits on one tenant while another has work.
//
//   - A tenant whose fetch brought nothing turns cold. While no tenant is
//     hot, the workers long-poll the cold ones in turn (the most recent
//     coldMax of them), so a tenant's trickle is fetched as it arrives.
//
//   - A cold tenant is forgotten idle after its last message: no partitioner
//     pulls from its consumer any more, and the server removes the consumer
//     after its inactive threshold. Discovery brings a tenant back (hot) as
//     soon as INGEST holds messages of it.
//
//   - While the sinks are behind (hold, the partitioner's back-pressure)
//     only tenants without a backlog take turns: those with at most one
//     turn of messages waiting, and the cold ones. A backlog waits in
//     INGEST, while another tenant's trickle goes on at once instead of
//     queueing behind it in the shards' batchers and sinks.
//
// Safe for concurrent use.
type scheduler struct {
	idle    time.Duration // a cold tenant is forgotten this long after its last message
	coldMax int           // the most cold tenants kept for long polls
	now     func() time.Time
	// hold, when set, says when tenants with a backlog (more than
	// turnSize messages waiting) are held back. Both are set before the
	// scheduler is used (holdBacklogs) and only read after.
	hold     holder
	turnSize uint64

	mu       sync.Mutex
	tenants  map[string]*tenant
	ring     []*tenant // the hot tenants, in turn order
	next     int       // the ring's next turn
	coldList []*tenant // the cold tenants, least recently active first
	coldNext int

	// wake is signalled when a tenant turns hot: a worker with nothing
	// to do takes it at once. Size 1: one signal is enough to look again.
	wake chan struct{}
	// kick asks discovery for a round: a worker found nothing to do.
	// Size 1: requests while one is pending are the same request.
	kick chan struct{}
}

// holder is back-pressure as the scheduler obeys it (gate).
type holder interface {
	// holding reports whether tenants with a backlog are held back.
	holding() bool
	// released is closed when the hold ends (at once while there is none).
	released() <-chan struct{}
}

func newScheduler(idle time.Duration, coldMax int) *scheduler {
	return &scheduler{
		idle: idle, coldMax: max(coldMax, 1), now: time.Now,
		tenants: map[string]*tenant{},
		wake:    make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
	}
}

// known reports whether the scheduler knows the tenant: its consumer
// exists (or did at the last look).
func (s *scheduler) known(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tenants[name] != nil
}

// consumer is the tenant's current consumer, nil when the tenant is not
// known.
func (s *scheduler) consumer(name string) fetcher {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[name]; t != nil {
		return t.cons
	}
	return nil
}

// names are the known tenants.
func (s *scheduler) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.tenants))
	for name := range s.tenants {
		out = append(out, name)
	}
	return out
}

// setConsumer hands a tenant's new consumer to the workers (a recreated
// one: the stall clock of its waiting messages starts again), or makes
// the tenant known with it.
func (s *scheduler) setConsumer(name string, cons fetcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[name]; t != nil {
		t.cons = cons
		if !t.waitingSince.IsZero() {
			t.waitingSince = s.now()
		}
		return
	}
	s.tenants[name] = &tenant{name: name, cons: cons, lastMsg: s.now()}
}

// pending says, after a discovery round, that INGEST holds n messages of
// the tenant: it turns hot, and a worker with nothing to do wakes. An
// unknown tenant is ignored (its consumer comes first: setConsumer).
// It returns how long the tenant's messages have waited without a fetch
// bringing any, for the stall check.
func (s *scheduler) pending(name string, n uint64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenants[name]
	if t == nil {
		return 0
	}
	t.backlog = n // before it turns hot: a held back tenant takes no turn
	now := s.now()
	if t.waitingSince.IsZero() {
		t.waitingSince = now
	}
	s.heat(t)
	return now.Sub(t.waitingSince)
}

// holdBacklogs makes the scheduler hold back the tenants with more than
// turnSize messages waiting while h holds. It is called before the
// scheduler is used.
func (s *scheduler) holdBacklogs(h holder, turnSize int) {
	s.hold, s.turnSize = h, uint64(turnSize)
}

// backlogs records a discovery round's count of each tenant's messages in
// INGEST (pending has recorded those the round found); a known tenant the
// round did not count has none.
func (s *scheduler) backlogs(counts map[string]uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, t := range s.tenants {
		t.backlog = counts[name]
	}
}

// held reports whether t's turn is held back now: the sinks are behind
// and t has a backlog. s.mu is held.
func (s *scheduler) held(t *tenant, holding bool) bool {
	return holding && t.backlog > s.turnSize
}

// heat puts t in the ring (at its end: it waits a round like the others)
// and wakes a worker.
func (s *scheduler) heat(t *tenant) {
	if t.hot {
		return
	}
	s.uncool(t)
	t.hot = true
	s.ring = append(s.ring, t)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// cool takes t out of the ring into the cold list (its end: the most
// recently active), dropping the least recently active beyond coldMax.
func (s *scheduler) cool(t *tenant) {
	s.unheat(t)
	if t.cold {
		return
	}
	t.cold = true
	s.coldList = append(s.coldList, t)
	for len(s.coldList) > s.coldMax {
		s.forget(s.coldList[0])
	}
}

func (s *scheduler) unheat(t *tenant) {
	if !t.hot {
		return
	}
	t.hot = false
	for i, r := range s.ring {
		if r == t {
			s.ring = append(s.ring[:i], s.ring[i+1:]...)
			if s.next > i {
				s.next--
			}
			break
		}
	}
	if s.next >= len(s.ring) {
		s.next = 0
	}
}

func (s *scheduler) uncool(t *tenant) {
	if !t.cold {
		return
	}
	t.cold = false
	for i, c := range s.coldList {
		if c == t {
			s.coldList = append(s.coldList[:i], s.coldList[i+1:]...)
			if s.coldNext > i {
				s.coldNext--
			}
			break
		}
	}
	if s.coldNext >= len(s.coldList) {
		s.coldNext = 0
	}
}

// forget drops t: nothing pulls from its consumer any more.
func (s *scheduler) forget(t *tenant) {
	s.unheat(t)
	s.uncool(t)
	delete(s.tenants, t.name)
}

// pick returns the next turn: the next hot tenant not held back, else a
// long poll of the next cold one; false when there is none. Cold tenants
// idle for longer than s.idle are forgotten first.
func (s *scheduler) pick() (turn, bool) {
	holding := s.hold != nil && s.hold.holding()
	s.mu.Lock()
	defer s.mu.Unlock()
	for range len(s.ring) {
		t := s.ring[s.next]
		s.next = (s.next + 1) % len(s.ring)
		if !s.held(t, holding) {
			return turn{t: t, cons: t.cons, wait: len(s.ring) == 1}, true
		}
	}
	now := s.now()
	for len(s.coldList) > 0 && now.Sub(s.coldList[0].lastMsg) >= s.idle {
		s.forget(s.coldList[0])
	}
	if len(s.coldList) == 0 {
		return turn{}, false
	}
	t := s.coldList[s.coldNext]
	s.coldNext = (s.coldNext + 1) % len(s.coldList)
	return turn{t: t, cons: t.cons, wait: true, poll: true}, true
}

// take returns the next turn. With no tenant hot it asks discovery for a
// round; with no turn to take (no tenant known, or every hot one held
// back) it waits for a tenant to turn hot or the hold to end, at most
// idleWait, and reports false (or when ctx ended).
func (s *scheduler) take(ctx context.Context, idleWait time.Duration) (turn, bool) {
	// The hold's end is looked up before the pick: should the hold end
	// in between, the wait below ends at once.
	var released <-chan struct{} // nil: no hold to wait for
	if s.hold != nil && s.hold.holding() {
		released = s.hold.released()
	}
	tr, ok := s.pick()
	if ok && !tr.wait {
		return tr, true
	}
	if !ok || tr.poll {
		s.askDiscovery()
	}
	if ok {
		return tr, true
	}
	timer := time.NewTimer(idleWait)
	defer timer.Stop()
	select {
	case <-s.wake:
	case <-released:
	case <-timer.C:
	case <-ctx.Done():
	}
	return turn{}, false
}

// askDiscovery asks for a discovery round without waiting for it.
func (s *scheduler) askDiscovery() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// done reports the outcome of a turn: got messages fetched. A tenant
// that brought messages stays (or turns) hot; one that brought none
// turns cold. A failed fetch changes nothing: the worker backs off and
// the tenant's next turn tries again.
func (s *scheduler) done(tr turn, got int, failed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := tr.t
	if failed || s.tenants[t.name] != t {
		return // forgotten meanwhile: discovery brings it back if needed
	}
	t.backlog -= min(t.backlog, uint64(got))
	if got > 0 {
		t.lastMsg = s.now()
		t.waitingSince = time.Time{}
		s.heat(t)
		return
	}
	s.cool(t)
}

// hotNames are the hot tenants in turn order, from the next one; for
// tests and the stall report.
func (s *scheduler) hotNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.ring))
	for i := range s.ring {
		out = append(out, s.ring[(s.next+i)%len(s.ring)].name)
	}
	return out
}
