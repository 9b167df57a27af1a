package ingest

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/tenants"
)

// reasonOverQuota labels a request refused by its tenant's quota.
const reasonOverQuota = "over_quota"

// checkQuotas is the readiness check of the tenants' limits.
const checkQuotas = "quotas"

// quotas are the tenants' limits as ingest applies them: the watcher of
// the SURGE_TENANTS bucket, the presence that counts the live ingest
// instances (each applies its share) and the token buckets.
type quotas struct {
	*tenants.Quota
	// Set once NATS is connected; read by every request, hence atomics.
	watcher  atomic.Pointer[tenants.Watcher]
	presence atomic.Pointer[lease.Presence]
}

func (s *Service) newQuotas() *quotas {
	q := &quotas{}
	q.Quota = tenants.NewQuota(func(tenant string) tenants.Limits {
		if w := q.watcher.Load(); w != nil {
			return w.Limits(tenant)
		}
		return s.cfg.Ingest.Quota
	}, func() int {
		if p := q.presence.Load(); p != nil {
			return p.Live()
		}
		return 1
	})
	return q
}

// runQuotas watches the limits and keeps this instance's presence until
// ctx ends; serve owns it.
func (s *Service) runQuotas(ctx context.Context, wg *sync.WaitGroup) {
	conn := s.conn.Load()
	w := tenants.NewWatcher(conn.JS, s.cfg.Streams.Replicas, s.cfg.Ingest.Quota, s.logger)
	p := lease.NewPresence(conn.JS, "ingest", s.instance, s.cfg.Ingest.InstanceTTL, s.cfg.Streams.Replicas, s.logger)
	s.quotas.watcher.Store(w)
	s.quotas.presence.Store(p)
	// Not ready until the limits were read once: a load balancer sends
	// nothing that the quotas would not see.
	s.host.Admin().NotReady(checkQuotas, "reading the tenants' limits from "+tenants.Bucket)
	wg.Go(func() { w.Run(ctx) })
	wg.Go(func() {
		select {
		case <-w.Ready():
			s.host.Admin().Ready(checkQuotas)
		case <-ctx.Done():
		}
	})
	wg.Go(func() {
		if err := p.Run(ctx); err != nil && ctx.Err() == nil {
			s.logger.Warn("presence stopped; the quotas count this instance alone")
		}
	})
}

// overQuota is the 429 of a request its tenant's quota refused.
func (s *Service) overQuota(tenant string, d tenants.Decision, events int) reply {
	s.metrics.quotaRefused.WithLabelValues(tenant, d.Reason).Inc()
	msg := fmt.Sprintf("tenant %s is over its quota of %s; retry after %s", tenant, quotaName(d.Reason), d.RetryAfter.Round(time.Millisecond))
	// The tenant sees its refusals with GET /v1/problems too.
	s.host.Problems.Add(tenant, problems.ReasonOverQuota, d.Reason, problems.Sample{Detail: msg})
	rep := reject(http.StatusTooManyRequests, reasonOverQuota, msg)
	rep.quota, rep.events = d, events
	return rep
}

func quotaName(reason string) string {
	if reason == "bytes" {
		return "bytes per second"
	}
	return "events per second"
}

// quotaHeaders sets the RateLimit-* headers of a limited tenant's answer
// (the IETF draft's fields, as most APIs send them): its events per
// second, the events it may still send at once, and the seconds until its
// bucket is full; Retry-After on a refusal.
func quotaHeaders(h http.Header, d tenants.Decision, refused bool) {
	h.Set("RateLimit-Limit", strconv.FormatFloat(math.Floor(d.Limit), 'f', -1, 64))
	h.Set("RateLimit-Remaining", strconv.FormatFloat(math.Floor(d.Remaining), 'f', -1, 64))
	h.Set("RateLimit-Reset", strconv.FormatInt(ceilSeconds(d.Reset), 10))
	if refused {
		h.Set("Retry-After", strconv.FormatInt(max(ceilSeconds(d.RetryAfter), 1), 10))
	}
}

func ceilSeconds(d time.Duration) int64 { return int64(math.Ceil(d.Seconds())) }

// tenantSlots bounds the in-flight requests of each tenant
// (MaxInFlightPerTenant), beside the service's bound: one tenant whose
// requests are slow to upload or come in a burst leaves the others slots.
type tenantSlots struct {
	limit int // 0: no bound
	mu    sync.Mutex
	held  map[string]int
}

// acquire takes one of tenant's slots, or says at once that it holds
// them all.
func (t *tenantSlots) acquire(tenant string) (release func(), ok bool) {
	if t.limit == 0 {
		return func() {}, true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.held[tenant] >= t.limit {
		return nil, false
	}
	t.held[tenant]++
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.held[tenant]--; t.held[tenant] == 0 {
			delete(t.held, tenant) // the map holds only tenants with requests in flight
		}
	}, true
}
