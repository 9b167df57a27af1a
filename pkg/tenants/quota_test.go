package tenants

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func fixed(l Limits) func(string) Limits { return func(string) Limits { return l } }
func instances(n int) func() int         { return func() int { return n } }
func newTestQuota(l Limits, n int) (*Quota, *clock) {
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	q := NewQuota(fixed(l), instances(n))
	q.now = c.now
	return q, c
}

func TestQuotaAdmitsTheBurstThenTheRate(t *testing.T) {
	q, c := newTestQuota(Limits{EventsPerSecond: 100, Burst: 400}, 1)
	for i := range 4 {
		d := q.Take("a", 100, 1000)
		require.True(t, d.Allowed, "request %d within the burst", i)
	}
	d := q.Take("a", 100, 1000)
	require.False(t, d.Allowed)
	require.Equal(t, "events", d.Reason)
	require.Equal(t, time.Second, d.RetryAfter, "100 events at 100/s")
	require.Equal(t, float64(100), d.Limit)
	require.Zero(t, d.Remaining)
	require.False(t, q.Check("a").Allowed, "an empty bucket refuses before the body")

	c.advance(500 * time.Millisecond)
	require.False(t, q.Take("a", 100, 0).Allowed, "50 tokens back, 100 needed")
	require.True(t, q.Take("a", 50, 0).Allowed)
	require.True(t, q.Take("b", 400, 0).Allowed, "another tenant has its own bucket")

	// Over 10 s at the rate exactly: 1,000 events, never more.
	accepted := 0
	for range 1000 {
		c.advance(10 * time.Millisecond)
		if q.Take("a", 1, 0).Allowed {
			accepted++
		}
	}
	require.Equal(t, 1000, accepted)
	require.False(t, q.Take("a", 2, 0).Allowed)
}

func TestQuotaLetsARequestOverTheBurstThroughAFullBucketIntoDebt(t *testing.T) {
	q, c := newTestQuota(Limits{EventsPerSecond: 10, Burst: 20}, 1)
	d := q.Take("a", 50, 0)
	require.True(t, d.Allowed, "a full bucket takes a request larger than itself")
	require.Equal(t, 5*time.Second, d.Reset, "30 events of debt and 20 to fill: 50 at 10/s")
	c.advance(2 * time.Second)
	d = q.Check("a")
	require.False(t, d.Allowed, "still 10 in debt")
	require.Equal(t, "events", d.Reason)
	c.advance(3 * time.Second) // 20 tokens: full again
	require.True(t, q.Take("a", 50, 0).Allowed)
}

func TestQuotaBytes(t *testing.T) {
	q, _ := newTestQuota(Limits{BytesPerSecond: 1000}, 1)
	require.True(t, q.Take("a", 5, 600).Allowed)
	d := q.Take("a", 5, 600)
	require.False(t, d.Allowed)
	require.Equal(t, "bytes", d.Reason)
	require.Equal(t, 200*time.Millisecond, d.RetryAfter)
	require.True(t, q.Take("a", 5, 400).Allowed)
}

func TestQuotaSharesTheLimitOverTheLiveInstances(t *testing.T) {
	live := 1
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	q := NewQuota(fixed(Limits{EventsPerSecond: 300, Burst: 300}), func() int { return live })
	q.now = c.now
	live = 3
	require.True(t, q.Take("a", 100, 0).Allowed, "a third of the burst")
	d := q.Take("a", 1, 0)
	require.False(t, d.Allowed)
	require.Equal(t, float64(300), d.Limit, "the limit answered is the tenant's whole quota")
	c.advance(time.Second)
	d = q.Take("a", 100, 0)
	require.True(t, d.Allowed, "a third of the rate")
	require.False(t, q.Take("a", 1, 0).Allowed)
}

func TestQuotaRefundAndUnlimited(t *testing.T) {
	q, _ := newTestQuota(Limits{EventsPerSecond: 10, Burst: 10}, 1)
	require.True(t, q.Take("a", 10, 0).Allowed)
	q.Refund("a", 10, 0)
	require.True(t, q.Take("a", 10, 0).Allowed, "a refunded request's retry fits")

	u, _ := newTestQuota(Limits{}, 1)
	d := u.Take("a", 1_000_000, 1<<30)
	require.True(t, d.Allowed)
	require.False(t, d.Limited)
}

func TestLimitsValidate(t *testing.T) {
	require.NoError(t, Limits{EventsPerSecond: 1, Burst: 2, BytesPerSecond: 3}.Validate())
	err := Limits{EventsPerSecond: -1, Burst: 5, BytesBurst: 3}.Validate()
	require.ErrorContains(t, err, "events_per_second must be a finite number")
	require.ErrorContains(t, err, "bytes_burst needs bytes_per_second")
}

func TestChargeGoesIntoDebtAndRoomWaitsItOut(t *testing.T) {
	q, c := newTestQuota(Limits{EventsPerSecond: 100, Burst: 200, BytesPerSecond: 1000}, 2)
	wait, room := q.Room("a")
	require.Zero(t, wait)
	require.Equal(t, float64(100), room, "this instance's share of the burst: 200 over 2")

	q.Charge("a", 150, 100) // 50/s and 100 a share: 50 events in debt
	wait, room = q.Room("a")
	require.Equal(t, time.Second, wait, "50 events of debt at 50/s")
	require.Zero(t, room)

	c.advance(time.Second)
	wait, _ = q.Room("a")
	require.Equal(t, time.Millisecond, wait, "an empty bucket waits for a token")
	c.advance(500 * time.Millisecond)
	wait, room = q.Room("a")
	require.Zero(t, wait)
	require.Equal(t, float64(25), room)

	q.Charge("a", 0, 2000) // 500 B/s a share, 500 B of burst: 1,500 B in debt
	wait, _ = q.Room("a")
	require.Equal(t, 3*time.Second, wait, "the bytes' debt")

	wait, room = q.Room("b")
	require.Zero(t, wait)
	require.Equal(t, float64(100), room, "another tenant has its own buckets")

	q2, _ := newTestQuota(Limits{}, 1)
	q2.Charge("a", 1e9, 1e9)
	wait, room = q2.Room("a")
	require.Zero(t, wait)
	require.True(t, math.IsInf(room, 1), "no limit")
}
