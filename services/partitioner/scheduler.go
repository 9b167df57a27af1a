package partitioner

import (
	"context"
	"math"
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
	// perMsg is the tenant's events per INGEST message, averaged over its
	// turns, to size a paced tenant's turn; zero before its first.
	perMsg float64
	// reserved is the events of the paced turns taken and not charged
	// yet, so that workers taking turns together share the quota's room.
	reserved float64
	// paced says the tenant's last pick found its quota spent.
	paced bool
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
	// size is the most messages the turn fetches: fetch_batch, or fewer
	// for a tenant whose quota has room for fewer (pacing).
	size int
	// reserved is the events the turn reserved of its tenant's quota.
	reserved float64
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
//   - A tenant with a quota (events or bytes per second) is paced: its
//     turn takes the messages its quota has room for (at least one), the
//     events are charged to the quota as they are handled, and while the
//     quota is in debt the tenant takes no turn. What JetStream acked is
//     never refused: over its quota a tenant's events wait in INGEST, and
//     its backlog reaches the shards at its quota, not at full speed.
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
	// pace, when set, applies the tenants' quotas to their turns; set
	// before the scheduler is used (paceBy) and only read after.
	pace    pacer
	maxTurn int // fetch_batch: the most messages of a turn

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

// pacer is the tenants' quotas as the scheduler applies them (pace.go).
type pacer interface {
	// room is how long the tenant waits before its quota has room again
	// (zero: now) and how many events it may take now (+Inf: no limit).
	room(tenant string) (time.Duration, float64)
	// charge takes what a turn handled from the tenant's quota.
	charge(tenant string, events, bytes int)
	// waiting says the tenant's turns wait for its quota (once per wait)
	// and, with tenant empty, that every tenant with work waits for its
	// quota: time waiting on a quota is no stall.
	waiting(tenant string)
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

// paceBy makes the scheduler apply the tenants' quotas to their turns of
// at most maxTurn messages. It is called before the scheduler is used.
func (s *scheduler) paceBy(p pacer, maxTurn int) {
	s.pace, s.maxTurn = p, maxTurn
}

// paced sizes t's turn by its quota's room: the messages that fit at its
// events per message, between 1 and maxTurn, or maxTurn without a limit.
// It reports how long t waits instead when its quota is in debt. s.mu is
// held.
func (s *scheduler) paced(t *tenant, now time.Time) (size int, reserve float64, wait time.Duration) {
	if s.pace == nil {
		return 0, 0, 0
	}
	wait, room := s.pace.room(t.name)
	if wait == 0 && t.reserved > 0 && room-t.reserved < max(t.perMsg, 1) {
		// Turns under way have reserved the room: another turn would
		// not fit a message (alone, a turn takes one message at least).
		// Their charge wakes a worker (charged); this is the longest
		// wait should it not come.
		wait = reservedWait
	}
	if wait > 0 {
		if !t.paced {
			t.paced = true
			s.pace.waiting(t.name)
		}
		// Its messages wait for its quota, not for a fault of its
		// consumer: the stall clock of discovery starts again.
		if !t.waitingSince.IsZero() {
			t.waitingSince = now
		}
		return 0, 0, wait
	}
	t.paced = false
	if math.IsInf(room, 1) {
		return s.maxTurn, 0, 0
	}
	size = 1
	if t.perMsg > 0 {
		size = int(min(max((room-t.reserved)/t.perMsg, 1), float64(s.maxTurn)))
	}
	reserve = float64(size) * t.perMsg
	t.reserved += reserve
	return size, reserve, 0
}

// reservedWait bounds the wait of a worker for a paced tenant's turns
// under way, which wake it when they are charged.
const reservedWait = 100 * time.Millisecond

// charged reports what a turn handled, events and bytes of got messages,
// which its tenant's quota pays for; it frees the turn's reservation and
// wakes a worker waiting on it.
func (s *scheduler) charged(tr turn, got, events, bytes int) {
	if s.pace == nil {
		return
	}
	s.mu.Lock()
	t := tr.t
	t.reserved = max(t.reserved-tr.reserved, 0)
	if got > 0 {
		per := float64(events) / float64(got)
		if t.perMsg == 0 {
			t.perMsg = per
		} else {
			t.perMsg = 0.8*t.perMsg + 0.2*per
		}
	}
	s.mu.Unlock()
	s.pace.charge(t.name, events, bytes)
	if tr.reserved > 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
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

// pick returns the next turn: the next hot tenant not held back nor
// waiting for its quota, else a long poll of the next cold one; false
// when there is none. Cold tenants idle for longer than s.idle are
// forgotten first.
func (s *scheduler) pick() (turn, bool) {
	tr, ok, _ := s.pickPaced()
	return tr, ok
}

// pickPaced is pick, and how long until the first hot tenant waiting for
// its quota may take a turn (zero when none waits).
func (s *scheduler) pickPaced() (turn, bool, time.Duration) {
	holding := s.hold != nil && s.hold.holding()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var soonest time.Duration
	for range len(s.ring) {
		t := s.ring[s.next]
		s.next = (s.next + 1) % len(s.ring)
		if s.held(t, holding) {
			continue
		}
		size, reserve, wait := s.paced(t, now)
		if wait > 0 {
			if soonest == 0 || wait < soonest {
				soonest = wait
			}
			continue
		}
		return turn{t: t, cons: t.cons, wait: len(s.ring) == 1, size: size, reserved: reserve}, true, 0
	}
	for len(s.coldList) > 0 && now.Sub(s.coldList[0].lastMsg) >= s.idle {
		s.forget(s.coldList[0])
	}
	if len(s.coldList) == 0 {
		return turn{}, false, soonest
	}
	t := s.coldList[s.coldNext]
	s.coldNext = (s.coldNext + 1) % len(s.coldList)
	// A long poll takes one message; the next turn, hot, is sized by the
	// tenant's quota.
	size := 0
	if s.pace != nil {
		if wait, _ := s.pace.room(t.name); wait > 0 {
			return turn{}, false, soonest // its quota is spent: no poll
		}
		size = 1
	}
	return turn{t: t, cons: t.cons, wait: true, poll: true, size: size}, true, soonest
}

// take returns the next turn. With no tenant hot it asks discovery for a
// round; with no turn to take (no tenant known, or every hot one held
// back or waiting for its quota) it waits for a tenant to turn hot, the
// hold to end or the first quota to have room, at most idleWait, and
// reports false (or when ctx ended).
func (s *scheduler) take(ctx context.Context, idleWait time.Duration) (turn, bool) {
	// The hold's end is looked up before the pick: should the hold end
	// in between, the wait below ends at once.
	var released <-chan struct{} // nil: no hold to wait for
	if s.hold != nil && s.hold.holding() {
		released = s.hold.released()
	}
	tr, ok, soonest := s.pickPaced()
	if ok && !tr.wait {
		return tr, true
	}
	if !ok || tr.poll {
		s.askDiscovery()
	}
	if ok {
		return tr, true
	}
	if soonest > 0 {
		// Every hot tenant is held back or waits for its quota.
		s.pace.waiting("")
		idleWait = min(idleWait, soonest)
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
