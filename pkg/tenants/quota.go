package tenants

import (
	"math"
	"sync"
	"time"
)

// Quota applies each tenant's limits to the requests of this instance,
// with two token buckets per tenant (events and bytes). The limits are
// global: each of n live instances applies 1/n of the rates and bursts,
// so a tenant whose requests spread over the instances (as a load
// balancer spreads them) gets its quota once, not n times. That costs no
// I/O per request; the price is that a tenant whose requests all reach one
// instance of several gets only that instance's share. A bucket shared
// through NATS would be exact but adds a round trip to every request (see
// docs/tenants.md for the figures).
//
// A request takes its events and bytes at once. One larger than a whole
// bucket (a burst smaller than a request's events) is let through when the
// bucket is full and leaves it in debt, which the next requests wait out:
// a token bucket that refused it would refuse it for ever, and the
// long-run rate stays the quota either way.
type Quota struct {
	limits func(tenant string) Limits
	live   func() int
	now    func() time.Time

	mu      sync.Mutex
	tenants map[string]*tenantBuckets
}

// NewQuota applies limits(tenant) divided by live() instances.
func NewQuota(limits func(tenant string) Limits, live func() int) *Quota {
	return &Quota{limits: limits, live: live, now: time.Now, tenants: map[string]*tenantBuckets{}}
}

type tenantBuckets struct {
	mu            sync.Mutex
	events, bytes bucket
}

type bucket struct {
	tokens float64
	last   time.Time
	primed bool
}

// Decision is the outcome of one request against its tenant's quota.
type Decision struct {
	// Limited says a quota applies to the tenant; the rest is empty
	// otherwise.
	Limited bool
	// Allowed says the request may go on; Reason names the quota that
	// refused it: "events" or "bytes".
	Allowed bool
	Reason  string
	// Limit is the tenant's events per second (its whole quota, every
	// instance's share together); Remaining the events it may still
	// send at once, estimated over every instance from this one's share.
	Limit, Remaining float64
	// RetryAfter is when a refused request would fit; Reset is when the
	// events bucket is full again.
	RetryAfter, Reset time.Duration
}

// Check refuses, before a request's body is read, a tenant whose buckets
// are empty or in debt: no request of it could pass now.
func (q *Quota) Check(tenant string) Decision { return q.take(tenant, 0, 0, false) }

// Take takes a request's events and bytes from its tenant's buckets, or
// refuses it and takes nothing.
func (q *Quota) Take(tenant string, events, bytes int) Decision {
	return q.take(tenant, float64(events), float64(bytes), true)
}

// Refund gives back what Take took for a request that was then not stored
// (its publish failed), so the client's retry is not charged twice.
func (q *Quota) Refund(tenant string, events, bytes int) {
	full := q.limits(tenant)
	if full.Unlimited() {
		return
	}
	l := full.share(q.live())
	tb := q.buckets(tenant)
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.events.tokens = min(tb.events.tokens+float64(events), l.eventsBurst())
	tb.bytes.tokens = min(tb.bytes.tokens+float64(bytes), l.bytesBurst())
}

// Charge takes events and bytes the tenant has already sent from its
// buckets, into debt when they do not fit: what JetStream acknowledged
// cannot be refused, so it is paced instead. Room then says how long the
// tenant's next events wait; the long-run rate is the quota.
func (q *Quota) Charge(tenant string, events, bytes int) {
	_, l, _, tb := q.refilled(tenant)
	if tb == nil {
		return
	}
	defer tb.mu.Unlock()
	if l.EventsPerSecond > 0 {
		tb.events.tokens -= float64(events)
	}
	if l.BytesPerSecond > 0 {
		tb.bytes.tokens -= float64(bytes)
	}
}

// Room says how long the tenant waits before its buckets are out of debt
// (zero when it may send now) and how many events it may send now:
// +Inf without a limit of events.
func (q *Quota) Room(tenant string) (wait time.Duration, events float64) {
	_, l, _, tb := q.refilled(tenant)
	if tb == nil {
		return 0, math.Inf(1)
	}
	defer tb.mu.Unlock()
	events = math.Inf(1)
	if r := l.EventsPerSecond; r > 0 {
		events = max(tb.events.tokens, 0)
		wait = max(wait, tb.events.debt(r))
	}
	if r := l.BytesPerSecond; r > 0 {
		wait = max(wait, tb.bytes.debt(r))
	}
	return wait, events
}

// refilled is tenant's limits, this instance's share of them (of n live
// instances) and its buckets, locked and refilled to now; tb is nil when
// no limit applies. The caller unlocks tb.mu.
func (q *Quota) refilled(tenant string) (full, l Limits, n int, tb *tenantBuckets) {
	full = q.limits(tenant)
	if full.Unlimited() {
		return full, Limits{}, 0, nil
	}
	n = max(q.live(), 1)
	l = full.share(n)
	now := q.now()
	tb = q.buckets(tenant)
	tb.mu.Lock()
	tb.events.refill(now, l.EventsPerSecond, l.eventsBurst())
	tb.bytes.refill(now, l.BytesPerSecond, l.bytesBurst())
	return full, l, n, tb
}

func (q *Quota) take(tenant string, events, bytes float64, take bool) Decision {
	full, l, n, tb := q.refilled(tenant)
	if tb == nil {
		return Decision{Allowed: true}
	}
	defer tb.mu.Unlock()
	er, eb := l.EventsPerSecond, l.eventsBurst()
	br, bb := l.BytesPerSecond, l.bytesBurst()
	d := Decision{Limited: true, Allowed: true, Limit: full.EventsPerSecond}
	if er > 0 {
		if wait, ok := tb.events.fits(events, er, eb, take); !ok {
			d.Allowed, d.Reason, d.RetryAfter = false, "events", wait
		}
	}
	if br > 0 && d.Allowed {
		if wait, ok := tb.bytes.fits(bytes, br, bb, take); !ok {
			d.Allowed, d.Reason, d.RetryAfter = false, "bytes", wait
		}
	}
	if d.Allowed && take {
		if er > 0 {
			tb.events.tokens -= events
		}
		if br > 0 {
			tb.bytes.tokens -= bytes
		}
	}
	if er > 0 {
		d.Remaining = max(tb.events.tokens, 0) * float64(n)
		d.Reset = seconds((eb - tb.events.tokens) / er)
	}
	return d
}

func (q *Quota) buckets(tenant string) *tenantBuckets {
	q.mu.Lock()
	defer q.mu.Unlock()
	tb := q.tenants[tenant]
	if tb == nil {
		tb = &tenantBuckets{}
		q.tenants[tenant] = tb
	}
	return tb
}

// refill adds what rate brought since the last call, up to burst; a new
// bucket starts full.
func (b *bucket) refill(now time.Time, rate, burst float64) {
	if !b.primed {
		b.tokens, b.last, b.primed = burst, now, true
		return
	}
	if dt := now.Sub(b.last).Seconds(); dt > 0 {
		b.tokens = min(b.tokens+rate*dt, burst)
		b.last = now
	}
	b.tokens = min(b.tokens, burst) // the burst may have shrunk
}

// fits says whether n fits now (a request over the whole burst fits a
// full bucket; Check's n of 0 fits any bucket not in debt or empty) and,
// when not, how long until it would.
func (b *bucket) fits(n, rate, burst float64, take bool) (time.Duration, bool) {
	need := min(n, burst)
	if !take {
		need = math.SmallestNonzeroFloat64 // something must be left
	}
	if b.tokens >= need {
		return 0, true
	}
	return seconds((need - b.tokens) / rate), false
}

// debt is how long until the bucket holds tokens again at rate: zero
// when it holds some now.
func (b *bucket) debt(rate float64) time.Duration {
	if b.tokens > 0 {
		return 0
	}
	return max(seconds(-b.tokens/rate), time.Millisecond)
}

func seconds(s float64) time.Duration {
	return time.Duration(math.Ceil(s * float64(time.Second)))
}
