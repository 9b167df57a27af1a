package partitioner

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/tenants"
)

// pace applies each tenant's quota (the SURGE_TENANTS bucket ingest
// watches too) to the events the partitioner reads of it. Ingest refuses
// an HTTP request over its tenant's quota with a 429; NATS and MQTT
// producers are acked by JetStream before any quota applies, so their
// events cannot be refused: the partitioner paces them instead, and a
// tenant's backlog reaches the shards at its quota, not at full speed,
// leaving the batchers, sinks and ClickHouse to the other tenants. Every
// event a partitioner reads is charged, whatever its entry, so what a
// tenant sends on all entries together flows on at its quota once; an
// HTTP request ingest accepted fits the quota already and waits only
// behind the tenant's own events over it.
//
// Like ingest, each partitioner applies its share of the quota, divided
// by the live partitioners (their member keys in SURGE_LEASES).
type pace struct {
	quota    *tenants.Quota
	watcher  *tenants.Watcher
	presence *lease.Presence
	s        *Service
	waits    *prometheus.CounterVec
}

func newPace(s *Service, conn service.Conn) *pace {
	p := &pace{
		s:        s,
		watcher:  tenants.NewWatcher(conn.JS, s.cfg.Streams.Replicas, s.cfg.Quota, s.logger),
		presence: lease.NewPresence(conn.JS, "partitioner", lease.NewInstanceID(), s.cfg.InstanceTTL, s.cfg.Streams.Replicas, s.logger),
		waits:    s.m.quotaWaits,
	}
	p.quota = tenants.NewQuota(p.watcher.Limits, p.presence.Live)
	return p
}

// run watches the limits and keeps this instance's presence until ctx
// ends; it returns once the limits were read (or after wait, or when ctx
// ends), so the workers start with them.
func (p *pace) run(ctx context.Context, wg *sync.WaitGroup, wait time.Duration) {
	wg.Go(func() { p.watcher.Run(ctx) })
	wg.Go(func() {
		if err := p.presence.Run(ctx); err != nil && ctx.Err() == nil {
			p.s.logger.Warn("presence stopped; the quotas count this partitioner alone", zap.Error(err))
		}
	})
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-p.watcher.Ready():
	case <-t.C:
		p.s.logger.Warn("tenants' limits not read yet, pacing by the configured default until they are", zap.String("bucket", tenants.Bucket))
	case <-ctx.Done():
	}
}

func (p *pace) room(tenant string) (time.Duration, float64) { return p.quota.Room(tenant) }

func (p *pace) charge(tenant string, events, bytes int) { p.quota.Charge(tenant, events, bytes) }

func (p *pace) waiting(tenant string) {
	if tenant != "" {
		p.waits.WithLabelValues(tenant).Inc()
		return
	}
	// Time waiting on quotas is no time without progress.
	p.s.wd.Idle()
	p.s.wd.Waiting("the tenants' quotas")
}
