// Package lease shares the shards of a service over its live instances
// with leases in a JetStream key-value bucket, so any number of batchers
// or sinks can run: the shards spread by themselves, move to the
// survivors when an instance dies and rebalance when one joins, with one
// owner per shard at a time.
//
// # The bucket
//
// SURGE_LEASES (Bucket) holds, per service, one key per shard,
// <service>.shard.<k>, whose value is the owner's instance id, and one key
// per live instance, members.<service>.<instance>. The bucket's TTL is the
// lease TTL: JetStream drops a key that nobody rewrote for that long
// (Update drops a per-key TTL, so the bucket's is the only one that
// holds). Its replicas follow the streams' (streams.replicas).
//
// # The protocol
//
// Every third of the TTL each instance rewrites its member key, renews
// each lease it holds with Update(key, instance, lastRevision), lists the
// live members and computes the shards it should own with Assign
// (rendezvous hashing with bounded loads: every instance that sees the
// same members agrees, the counts differ by at most one and a join moves
// about 1/n of the shards). It takes a shard it should own whose key is
// free, deleted or expired with Create (exactly one of concurrent Creates
// wins) and hands over a shard it should no longer own: it cancels the
// shard's work, waits for it to return (the batcher publishes its partial
// batch meanwhile, under a lease it still renews), then deletes the key at
// its revision, so the new owner takes it at its next round. A refused
// renewal means another instance holds the key: the shard's work is
// cancelled at once. An instance that stops does the same for all its
// shards and deletes its member key; one that dies stops renewing and its
// keys expire after the TTL, so its shards move within about TTL plus a
// third of it (measured here: a 3 s TTL let a contender win 3.35 s after
// the last renewal).
//
// # Fencing
//
// Holds(k) reports the lease still valid: renewed less than three
// quarters of the TTL ago, by the monotonic clock, measured from before
// the renewal was sent. Since the server starts the TTL when it stores the
// write, no contender can win before the TTL runs out, so the last quarter
// of it is the margin for the clock and for an output already on its way.
// Every output of a shard (a batch publish, a ClickHouse insert) checks
// Holds just before it is sent, and the shard's work is cancelled when the
// lease runs out without renewal or a renewal is refused. What may still
// race is the one write sent just before the lease ran out and delivered
// after the takeover (a paused process, a frozen socket); the rest of
// Surge makes it harmless: JetStream drops a batch whose Nats-Msg-Id
// (<shard>:<first>-<last>) it has seen, the sink drops rows at or below
// its shard's watermark, and ClickHouse's block deduplication on
// replicated tables stores an identical insert once.
//
// # Why not orbit.go's pcgroups
//
// Partitioned consumer groups (github.com/synadia-io/orbit.go/pcgroups,
// tried at v0.2.2 against this nats-server) do not fit Surge: static
// groups never rebalance when an instance dies (a partition fails over
// only after its PinnedTTL, the AckWait, and the first instance pins every
// partition); elastic groups change members only by admin calls and copy
// the stream into a new one with new sequence numbers, while Surge's batch
// ids (<shard>:<first>-<last>), the batcher's resume point and the sink's
// watermarks are EVENTS sequences; and a paused old owner that resumed
// handled and acked its buffered batch after the new owner had moved on,
// with nothing to fence it. Leases keep the streams as they are, move a
// dead instance's shards by themselves within the TTL, and give every
// output a check to fence it with.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/shard"
)

// Bucket is the key-value bucket of every service's leases.
const Bucket = "SURGE_LEASES"

// MinTTL is the shortest lease TTL.
const MinTTL = shard.MinLeaseTTL

// name is what a service name and an instance id may hold: one token of a
// key, so members.<service>.* lists exactly the instances.
var name = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Config says which shards an Owner shares, under which name.
type Config struct {
	// Service names the shards' service (batcher, sink); its keys are
	// <service>.shard.<k> and members.<service>.<instance>.
	Service string
	// Instance names this instance; it must be unique among the live
	// instances of the service (NewInstanceID).
	Instance string
	// Shards is the number of shards, 0..Shards-1.
	Shards int
	// TTL is the lease TTL the bucket is created with; an existing bucket
	// keeps its own, which then applies.
	TTL time.Duration
	// Replicas is the bucket's replica count (streams.replicas); 0 is 1.
	Replicas int
}

// Validate reports every problem of the configuration.
func (c Config) Validate() error {
	var errs []error
	if !name.MatchString(c.Service) {
		errs = append(errs, fmt.Errorf("lease service %q must be letters, digits, _ or -", c.Service))
	}
	if !name.MatchString(c.Instance) {
		errs = append(errs, fmt.Errorf("lease instance %q must be letters, digits, _ or -", c.Instance))
	}
	if c.Shards < 1 || c.Shards > shard.MaxShards {
		errs = append(errs, fmt.Errorf("lease shards must be 1 to %d, got %d", shard.MaxShards, c.Shards))
	}
	if c.TTL < MinTTL {
		errs = append(errs, fmt.Errorf("lease ttl must be at least %s, got %s", MinTTL, c.TTL))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("lease replicas must be 0 to 5, got %d", c.Replicas))
	}
	return errors.Join(errs...)
}

// NewInstanceID names this process uniquely: the host name (what a key
// token may hold of it) and 6 random hex digits, so a restarted process
// never mistakes its predecessor's leases for its own.
func NewInstanceID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "surge"
	}
	host = strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return '-'
	}, host)
	b := make([]byte, 3)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return host + "-" + hex.EncodeToString(b)
}

// Owner takes, renews and hands over the leases of one instance and runs
// the work of each shard it holds. Create it with NewOwner and call Run
// once; Holds is safe for concurrent use.
type Owner struct {
	js  jetstream.JetStream
	cfg Config
	log *zap.Logger

	started atomic.Bool
	kv      jetstream.KeyValue // set by Run before any lease
	// finished receives a shard whose work returned; one run per shard at
	// a time, so Shards slots never block.
	finished chan int
	wg       sync.WaitGroup // the runs

	mu sync.Mutex
	// ttl and the periods derived from it, set by Run from the bucket's
	// TTL before any lease exists.
	ttl, renewEvery, valid, request time.Duration
	leases                          map[int]*held // the leases this instance holds
	runs                            map[int]context.CancelFunc
}

// held is one lease of this instance.
type held struct {
	rev     uint64    // the revision of the key's last write, ours
	renewed time.Time // when that write was sent (monotonic)
	// release says the shard is being handed over: its work was
	// cancelled and the key is deleted once the work returned.
	release bool
	// expire cancels the shard's work when the lease runs out without a
	// renewal, even while the renewal is stuck in a request.
	expire *time.Timer
}

// NewOwner validates cfg; Run does the network work.
func NewOwner(js jetstream.JetStream, cfg Config, log *zap.Logger) (*Owner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	return &Owner{
		js:       js,
		cfg:      cfg,
		log:      log.With(zap.String("instance", cfg.Instance)),
		finished: make(chan int, cfg.Shards),
		leases:   make(map[int]*held),
		runs:     make(map[int]context.CancelFunc),
	}, nil
}

// Instance is this instance's id.
func (o *Owner) Instance() string { return o.cfg.Instance }

// Holds reports whether this instance holds shard k's lease now, with
// the margin for the clock and an output on its way. Check it just before
// every output of the shard. A lease found run out also cancels the
// shard's work.
func (o *Owner) Holds(k int) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	h := o.leases[k]
	if h == nil {
		return false
	}
	if time.Since(h.renewed) < o.valid {
		return true
	}
	if cancel := o.runs[k]; cancel != nil {
		cancel()
	}
	return false
}

// Owned is the shards whose lease this instance holds now, ascending.
func (o *Owner) Owned() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []int
	for k := range o.cfg.Shards {
		if h := o.leases[k]; h != nil && time.Since(h.renewed) < o.valid {
			out = append(out, k)
		}
	}
	return out
}

// Run shares the shards until ctx ends: it runs work(ctx, k) in a
// goroutine of its own for each shard k this instance holds, with a
// context cancelled when the lease is lost, runs out or is handed over,
// and lets the lease go only after work returned. When ctx ends it
// cancels every shard's work, keeps renewing until all of it returned,
// then deletes its keys and returns nil. It fails only when ctx ends
// before the bucket could be opened. A work that fails is logged and run
// again at the next round while the lease holds.
func (o *Owner) Run(ctx context.Context, work func(ctx context.Context, shard int) error) error {
	if !o.started.CompareAndSwap(false, true) {
		return errors.New("lease: Run called twice")
	}
	if err := o.open(ctx); err != nil {
		return err
	}
	o.log.Info("sharing shards by leases", zap.String("service", o.cfg.Service), zap.String("bucket", Bucket),
		zap.Int("shards", o.cfg.Shards), zap.Duration("ttl", o.ttl))
	tick := time.NewTicker(o.renewEvery)
	defer tick.Stop()
	done := ctx.Done()
	o.round(ctx, ctx.Err() != nil, work)
	for done != nil || !o.idle() {
		select {
		case <-done:
			done = nil
			o.stop()
			o.round(ctx, true, work)
		case <-tick.C:
			o.round(ctx, done == nil, work)
		case k := <-o.finished:
			o.reap(k)
			o.settle(ctx)
		}
	}
	o.wg.Wait()
	o.log.Info("released every shard")
	return nil
}

// open looks the bucket up, creating it when missing, and takes its TTL,
// retrying until it answers or ctx ends.
func (o *Owner) open(ctx context.Context) error {
	kv, ttl, err := openBucket(ctx, o.js, o.cfg.TTL, o.cfg.Replicas, o.log)
	if err != nil {
		return err
	}
	o.kv = kv
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ttl = ttl
	o.renewEvery = ttl / 3
	o.valid = ttl - ttl/4
	o.request = ttl / 4
	return nil
}

// openBucket looks the bucket up, creating it with ttl when missing, and
// returns it with its own TTL, retrying until it answers or ctx ends.
func openBucket(ctx context.Context, js jetstream.JetStream, want time.Duration, replicas int, log *zap.Logger) (jetstream.KeyValue, time.Duration, error) {
	var kv jetstream.KeyValue
	var ttl time.Duration
	err := retry.Do(ctx, retry.DefaultConfig(want), func() error {
		rctx, cancel := context.WithTimeout(ctx, want)
		defer cancel()
		var err error
		kv, err = js.KeyValue(rctx, Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = js.CreateKeyValue(rctx, jetstream.KeyValueConfig{
				Bucket:      Bucket,
				Description: "Surge shard leases and live instances",
				History:     1,
				TTL:         want,
				Storage:     jetstream.FileStorage,
				Replicas:    replicas,
			})
			if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile
				kv, err = js.KeyValue(rctx, Bucket)
			}
		}
		if err != nil {
			return err
		}
		st, err := kv.Status(rctx)
		if err != nil {
			return err
		}
		ttl = st.TTL()
		if ttl < MinTTL {
			return retry.Permanent(fmt.Errorf("bucket %s has a TTL of %s, the least is %s", Bucket, ttl, MinTTL))
		}
		return nil
	}, func(attempt int, err error, wait time.Duration) {
		log.Warn("open lease bucket, retrying", zap.String("bucket", Bucket), zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err != nil {
		return nil, 0, fmt.Errorf("lease bucket %s: %w", Bucket, err)
	}
	if ttl != want {
		log.Warn("the lease bucket keeps the TTL it was created with", zap.String("bucket", Bucket),
			zap.Duration("bucket_ttl", ttl), zap.Duration("configured_ttl", want))
	}
	return kv, ttl, nil
}

// round is one pass of the protocol: heartbeat, renew, hand over, take.
// Stopping, it only renews and lets go of shards whose work returned.
func (o *Owner) round(ctx context.Context, stopping bool, work func(context.Context, int) error) {
	o.drain()
	// Requests outlive ctx: a stopping instance still renews and deletes.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.request)
	defer cancel()
	if !stopping {
		if _, err := o.kv.PutString(rctx, o.memberKey(), o.cfg.Instance); err != nil {
			o.log.Warn("lease heartbeat", zap.Error(err))
		}
	}
	o.renew(rctx)
	if !stopping {
		if members, err := o.members(rctx); err != nil {
			o.log.Warn("list lease members", zap.Error(err))
		} else {
			want := Assign(o.cfg.Shards, members)[o.cfg.Instance]
			o.handOver(want)
			o.take(ctx, rctx, want, work)
		}
	}
	o.drain()
	o.release(rctx)
}

// settle lets go of the handed-over shards whose work returned.
func (o *Owner) settle(ctx context.Context) {
	o.drain()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.request)
	defer cancel()
	o.release(rctx)
}

// renew rewrites every held lease at its revision. A refused write means
// another instance holds the key: the shard's work is cancelled at once.
// Any other failure leaves the lease to its expiry timer.
func (o *Owner) renew(ctx context.Context) {
	var failed int
	var firstErr error
	for _, k := range o.held() {
		rev := o.revision(k)
		sent := time.Now()
		next, err := o.kv.Update(ctx, o.key(k), []byte(o.cfg.Instance), rev)
		switch {
		case err == nil:
			o.renewed(k, next, sent)
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			o.refused(ctx, k)
		default:
			failed++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if failed > 0 {
		o.log.Warn("lease renewals failed; a lease not renewed in time stops its shard", zap.Int("failed", failed), zap.Error(firstErr))
	}
}

// refused handles a renewal of shard k refused for its revision. A key
// that still names this instance was last written by this instance: a
// renewal that landed but whose answer was lost (a slow or failed-over
// NATS node). Nobody else wrote in between, so the lease is adopted at
// the key's revision and the shard keeps running. Otherwise the shard is
// lost.
func (o *Owner) refused(ctx context.Context, k int) {
	sent := time.Now()
	rev, err := o.adopt(ctx, k)
	switch {
	case err == nil:
		o.renewed(k, rev, sent)
		o.log.Info("lease renewal's answer was lost; kept the lease at the key's revision", zap.Int("shard", k), zap.Uint64("revision", rev))
	case errors.Is(err, jetstream.ErrKeyExists):
		o.lost(k, "renewal refused: another instance holds the key")
	default:
		o.lost(k, fmt.Sprintf("renewal refused, and reading the key failed: %v", err))
	}
}

// handOver cancels the work of every held shard not in want; its key is
// deleted once the work returned (release).
func (o *Owner) handOver(want []int) {
	keep := make(map[int]bool, len(want))
	for _, k := range want {
		keep[k] = true
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, h := range o.leases {
		if keep[k] || h.release {
			continue
		}
		h.release = true
		if cancel := o.runs[k]; cancel != nil {
			cancel()
		}
		o.log.Info("handing shard over", zap.Int("shard", k))
	}
}

// take starts the work of every shard in want this instance may run: a
// held lease whose work is not running, or a free key won with Create, or
// a key still naming this instance (a write whose answer was lost),
// adopted at its revision.
func (o *Owner) take(ctx, rctx context.Context, want []int, work func(context.Context, int) error) {
	for _, k := range want {
		o.mu.Lock()
		h, running := o.leases[k], o.runs[k] != nil
		o.mu.Unlock()
		switch {
		case running || (h != nil && h.release):
			continue // a run, or the end of the last one, is under way
		case h != nil:
			if o.Holds(k) { // work that returned by itself starts again
				o.start(ctx, k, work)
			}
			continue
		}
		sent := time.Now()
		rev, err := o.kv.Create(rctx, o.key(k), []byte(o.cfg.Instance))
		if errors.Is(err, jetstream.ErrKeyExists) {
			rev, err = o.adopt(rctx, k)
		}
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyExists) {
				o.log.Warn("take lease", zap.Int("shard", k), zap.Error(err))
			}
			continue
		}
		o.acquired(k, rev, sent)
		o.log.Info("shard taken", zap.Int("shard", k), zap.Uint64("revision", rev))
		o.start(ctx, k, work)
	}
}

// adopt takes over a key that still names this instance, at its
// revision; a key of another instance is ErrKeyExists.
func (o *Owner) adopt(ctx context.Context, k int) (uint64, error) {
	e, err := o.kv.Get(ctx, o.key(k))
	if err != nil {
		return 0, err
	}
	if string(e.Value()) != o.cfg.Instance {
		return 0, jetstream.ErrKeyExists
	}
	return o.kv.Update(ctx, o.key(k), []byte(o.cfg.Instance), e.Revision())
}

// start runs work for shard k in a goroutine of its own.
func (o *Owner) start(ctx context.Context, k int, work func(context.Context, int) error) {
	wctx, cancel := context.WithCancel(ctx)
	o.mu.Lock()
	o.runs[k] = cancel
	o.mu.Unlock()
	o.wg.Go(func() {
		defer func() { o.finished <- k }()
		defer cancel()
		if err := work(wctx, k); err != nil && wctx.Err() == nil {
			o.log.Error("shard work failed; it starts again at the next round while the lease holds", zap.Int("shard", k), zap.Error(err))
		}
	})
}

// drain takes note of every shard whose work returned.
func (o *Owner) drain() {
	for {
		select {
		case k := <-o.finished:
			o.reap(k)
		default:
			return
		}
	}
}

// reap forgets the returned work of shard k.
func (o *Owner) reap(k int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.runs, k)
}

// release deletes, at their revision, the keys of handed-over shards
// whose work returned. A failed delete leaves the key to expire.
func (o *Owner) release(ctx context.Context) {
	type gone struct {
		k   int
		rev uint64
	}
	var done []gone
	o.mu.Lock()
	for k, h := range o.leases {
		if h.release && o.runs[k] == nil {
			h.expire.Stop()
			delete(o.leases, k)
			done = append(done, gone{k, h.rev})
		}
	}
	o.mu.Unlock()
	for _, g := range done {
		if err := o.kv.Delete(ctx, o.key(g.k), jetstream.LastRevision(g.rev)); err != nil {
			o.log.Warn("release lease; it expires instead", zap.Int("shard", g.k), zap.Error(err))
			continue
		}
		o.log.Info("shard released", zap.Int("shard", g.k))
	}
}

// stop begins the shutdown: every shard is handed over, and the member
// key goes so the others take the shards at their next round.
func (o *Owner) stop() {
	o.mu.Lock()
	for k, h := range o.leases {
		h.release = true
		if cancel := o.runs[k]; cancel != nil {
			cancel()
		}
	}
	o.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), o.request)
	defer cancel()
	if err := o.kv.Delete(ctx, o.memberKey()); err != nil {
		o.log.Warn("leave lease members; the key expires instead", zap.Error(err))
	}
}

// idle reports whether no lease and no work is left.
func (o *Owner) idle() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.leases) == 0 && len(o.runs) == 0
}

// members lists the live instances of the service, this one included.
func (o *Owner) members(ctx context.Context) ([]string, error) {
	return listMembers(ctx, o.kv, o.cfg.Service, o.cfg.Instance)
}

// memberKey is the key an instance of a service rewrites while it lives.
func memberKey(service, instance string) string { return "members." + service + "." + instance }

// listMembers lists the live instances of service in kv, self included.
func listMembers(ctx context.Context, kv jetstream.KeyValue, service, self string) ([]string, error) {
	prefix := memberKey(service, "")
	w, err := kv.WatchFiltered(ctx, []string{prefix + "*"}, jetstream.IgnoreDeletes(), jetstream.MetaOnly())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := []string{self}
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // every live key listed, or the watch stopped
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				return out, nil
			}
			if m := strings.TrimPrefix(e.Key(), prefix); m != self {
				out = append(out, m)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// held is the shards whose lease this instance holds.
func (o *Owner) held() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]int, 0, len(o.leases))
	for k := range o.leases {
		out = append(out, k)
	}
	return out
}

// revision is the revision of shard k's lease.
func (o *Owner) revision(k int) uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.leases[k].rev
}

// acquired records a lease won at rev by a write sent at sent.
func (o *Owner) acquired(k int, rev uint64, sent time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	h := &held{rev: rev, renewed: sent}
	h.expire = time.AfterFunc(time.Until(sent.Add(o.valid)), func() { o.expired(k, h) })
	o.leases[k] = h
}

// renewed records a renewal of shard k's lease to rev, sent at sent.
func (o *Owner) renewed(k int, rev uint64, sent time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	h := o.leases[k]
	h.rev, h.renewed = rev, sent
	h.expire.Reset(time.Until(sent.Add(o.valid)))
}

// lost forgets shard k's lease and cancels its work at once.
func (o *Owner) lost(k int, why string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if h := o.leases[k]; h != nil {
		h.expire.Stop()
		delete(o.leases, k)
	}
	if cancel := o.runs[k]; cancel != nil {
		cancel()
	}
	o.log.Warn("lease lost; shard stopped", zap.Int("shard", k), zap.String("reason", why))
}

// expired cancels the work of shard k when its lease h ran out without a
// renewal. The lease is kept: a renewal that still lands (nobody took the
// key) resumes it.
func (o *Owner) expired(k int, h *held) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.leases[k] != h || time.Since(h.renewed) < o.valid {
		return
	}
	if cancel := o.runs[k]; cancel != nil {
		cancel()
		o.log.Warn("lease ran out without renewal; shard stopped", zap.Int("shard", k))
	}
}

// key is shard k's lease key.
func (o *Owner) key(k int) string { return o.cfg.Service + ".shard." + strconv.Itoa(k) }

// memberKey is this instance's member key.
func (o *Owner) memberKey() string { return memberKey(o.cfg.Service, o.cfg.Instance) }

// Holders reads, from the lease bucket, which instance holds each of the
// first shards shards of service: instance id -> its shards, ascending.
// A shard nobody holds is in no list. For tools and tests that look at
// the spread from outside.
func Holders(ctx context.Context, js jetstream.JetStream, service string, shards int) (map[string][]int, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		return nil, fmt.Errorf("lease bucket %s: %w", Bucket, err)
	}
	out := make(map[string][]int)
	for k := range shards {
		e, err := kv.Get(ctx, service+".shard."+strconv.Itoa(k))
		switch {
		case err == nil:
			out[string(e.Value())] = append(out[string(e.Value())], k)
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return nil, fmt.Errorf("lease of %s shard %d: %w", service, k, err)
		}
	}
	return out, nil
}

// OwnerFor is the shard.Owner of an instance of service under o: the
// shards o lists (shard.Static) in static mode, a lease Owner named
// instance in lease mode, its bucket with replicas replicas.
func OwnerFor(js jetstream.JetStream, service, instance string, o shard.Ownership, replicas int, log *zap.Logger) (shard.Owner, error) {
	if !o.Leased() {
		return shard.Static(o.OwnedShards()), nil
	}
	return NewOwner(js, Config{Service: service, Instance: instance, Shards: o.Shards, TTL: o.LeaseTTL, Replicas: replicas}, log)
}
