package lease

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Presence keeps the member key of one instance of a service that holds
// no shards (ingest) in the lease bucket, as an Owner does, and counts
// the service's live instances: a limit shared by every instance (a
// tenant's quota) is divided by that count.
//
// Until the first count, and while the bucket does not answer, Live keeps
// its last value (1 at first): an instance that cannot see the others
// errs toward its whole share, never toward none.
type Presence struct {
	js       jetstream.JetStream
	service  string
	instance string
	ttl      time.Duration
	replicas int
	log      *zap.Logger
	live     atomic.Int64
}

// NewPresence makes the presence of instance of service; ttl and replicas
// create the bucket when missing, as Config's do.
func NewPresence(js jetstream.JetStream, service, instance string, ttl time.Duration, replicas int, log *zap.Logger) *Presence {
	p := &Presence{js: js, service: service, instance: instance, ttl: ttl, replicas: replicas, log: log}
	p.live.Store(1)
	return p
}

// Live is the number of live instances of the service, this one included.
func (p *Presence) Live() int { return int(p.live.Load()) }

// Run keeps the member key and the count, every third of the bucket's
// TTL, until ctx ends; then it deletes the key so the others' share grows
// at their next count.
func (p *Presence) Run(ctx context.Context) error {
	kv, ttl, err := openBucket(ctx, p.js, p.ttl, p.replicas, p.log)
	if err != nil {
		return err
	}
	key := memberKey(p.service, p.instance)
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, ttl/3)
		if _, err := kv.Put(rctx, key, []byte(p.instance)); err != nil {
			p.log.Warn("presence: write member key", zap.String("key", key), zap.Error(err))
		} else if members, err := listMembers(rctx, kv, p.service, p.instance); err != nil {
			p.log.Warn("presence: list members", zap.String("service", p.service), zap.Error(err))
		} else if n := int64(len(members)); n != p.live.Swap(n) {
			p.log.Info("live instances", zap.String("service", p.service), zap.Int64("instances", n))
		}
		cancel()
		select {
		case <-t.C:
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ttl/3)
			_ = kv.Delete(dctx, key)
			cancel()
			return nil
		}
	}
}
