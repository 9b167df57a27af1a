package partitioner

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/streams"
)

// checkConsumer is the readiness check of the tenants' consumers: not
// ready until the first discovery round made the consumers of the tenants
// with work, nor while the server refuses one of them.
const checkConsumer = "consumer"

// apiTimeout bounds one JetStream API request of the partitioner: a
// consumer's creation, the stream's subjects, the consumer list.
const apiTimeout = 5 * time.Second

// ConsumerPrefix starts the name of every partitioner consumer of INGEST:
// one durable consumer per tenant with work (ConsumerName).
const ConsumerPrefix = "partitioner-"

// LegacyConsumerName is the one consumer all partitioners shared before
// they read each tenant on its own. A work queue refuses a filtered
// consumer beside it, so a partitioner deletes it at start (after
// removing the messages below its ack floor): its messages stay in
// INGEST until acked, and the tenants' consumers deliver them again.
const LegacyConsumerName = "partitioner"

// MetaTenant is the consumer metadata key that names its tenant.
const MetaTenant = "surge.tenant"

// ConsumerName is the durable INGEST consumer of a tenant, which every
// partitioner shares: partitioner-<tenant> for a valid tenant (letters,
// digits, '_' and '-', so a valid consumer name), else partitioner-~ and
// a hash of the subject token (a producer may publish to any token below
// surge.in.; the partitioner dead-letters it, so it needs a consumer too).
// '~' is in no valid tenant, so the two forms never meet.
func ConsumerName(tenant string) string {
	if event.ValidTenant(tenant) {
		return ConsumerPrefix + tenant
	}
	h := fnv.New64a()
	h.Write([]byte(tenant)) // a hash.Hash never fails to write
	return fmt.Sprintf("%s~%016x", ConsumerPrefix, h.Sum64())
}

// ingestPrefix starts the subjects of ingest's requests: ingest.<tenant>.
var ingestPrefix = streams.IngestSubject("")

// TenantOf is the tenant of an INGEST subject: the token after ingest. or
// surge.in. Every subject INGEST captures has one, and FilterSubjects
// covers every subject of its tenant, so every message has exactly one
// consumer.
func TenantOf(subject string) (string, bool) {
	if t, ok := streams.ProducerTenant(subject); ok {
		return t, true
	}
	rest, ok := strings.CutPrefix(subject, ingestPrefix)
	if !ok {
		return "", false
	}
	t, _, _ := strings.Cut(rest, ".")
	return t, t != ""
}

// FilterSubjects are the INGEST subjects of a tenant's consumer: ingest's
// ingest.<tenant> and the producers' surge.in.<tenant> and below, with
// ingest.<tenant>.> so that nothing INGEST captures is left without a
// consumer. Tenants' filters never overlap, as a work queue requires.
func FilterSubjects(tenant string) []string {
	return append([]string{ingestPrefix + tenant, ingestPrefix + tenant + ".>"}, streams.ProducerSubjects(tenant)...)
}

// consumerConfig is a tenant's INGEST consumer. Every partitioner makes
// the same one, so they share it.
func (c Config) consumerConfig(tenant string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:           ConsumerName(tenant),
		Description:       "Surge partitioners, tenant " + tenant,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           c.AckWait,
		MaxDeliver:        -1,
		MaxAckPending:     c.MaxAckPending,
		FilterSubjects:    FilterSubjects(tenant),
		InactiveThreshold: c.TenantIdle,
		Metadata:          map[string]string{MetaTenant: tenant},
	}
}

// source is INGEST as the partitioner reads it: the tenants' consumers,
// which discovery makes and the scheduler hands out, made again when gone
// or stalled.
type source struct {
	js     jetstream.JetStream
	cfg    Config
	sched  *scheduler
	s      *Service
	logger *zap.Logger

	mu sync.Mutex
	// refused are the tenants whose consumer the server refuses, with
	// why: the service is not ready while any is.
	refused map[string]string

	// remaking serialises recreate's check and create, so workers that
	// find the same consumer gone at once make it once.
	remaking sync.Mutex

	// truncated is set once a discovery round could not read every
	// subject of INGEST, so the warning is logged once. Only discovery
	// reads and writes it (at the start, then its own goroutine).
	truncated bool
}

func newSource(s *Service, js jetstream.JetStream) *source {
	sched := newScheduler(s.cfg.TenantIdle/2, coldTenants(s.cfg.Workers))
	if s.gate != nil && s.gate.on() {
		sched.holdBacklogs(s.gate, s.cfg.FetchBatch)
	}
	return &source{js: js, cfg: s.cfg, s: s, logger: s.logger, sched: sched, refused: map[string]string{}}
}

// coldTenants is how many tenants without work the workers long-poll
// while none has work: enough for every worker to have its own, few
// enough that each is polled often.
func coldTenants(workers int) int { return 2 * workers }

// create creates (or updates to the configuration) the tenant's
// consumer, and hands it to the workers.
func (src *source) create(ctx context.Context, tenant string) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	cfg := src.cfg.consumerConfig(tenant)
	c, err := src.js.CreateOrUpdateConsumer(ctx, streams.Ingest, cfg)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrCodeConsumerWQNotUnique {
		// An older partitioner made the shared consumer again: it goes,
		// and its messages come through the tenants' consumers.
		if derr := src.deleteLegacy(ctx); derr == nil {
			c, err = src.js.CreateOrUpdateConsumer(ctx, streams.Ingest, cfg)
		}
	}
	if err != nil {
		err = fmt.Errorf("create consumer %s: %w", cfg.Durable, err)
		src.setRefused(tenant, err.Error())
		return err
	}
	src.setRefused(tenant, "")
	src.sched.setConsumer(tenant, c)
	return nil
}

// jsErrCodeConsumerWQNotUnique is the server's answer to a consumer whose
// filter overlaps another's on a work queue ("filtered consumer not
// unique on workqueue stream").
const jsErrCodeConsumerWQNotUnique jetstream.ErrorCode = 10100

// setRefused records whether the server refuses the tenant's consumer
// (why non-empty) and sets readiness.
func (src *source) setRefused(tenant, why string) {
	src.mu.Lock()
	defer src.mu.Unlock()
	_, was := src.refused[tenant]
	switch {
	case why != "":
		src.refused[tenant] = why
	case was:
		delete(src.refused, tenant)
	default:
		return
	}
	src.setReadyLocked()
}

// ready sets readiness once INGEST is open: ready when the server refuses
// no tenant's consumer.
func (src *source) ready() {
	src.mu.Lock()
	defer src.mu.Unlock()
	src.setReadyLocked()
}

// forgetRefused drops the refusals of tenants that have no messages any
// more (with), so that none keeps the service not ready for good.
func (src *source) forgetRefused(with map[string]uint64) {
	src.mu.Lock()
	defer src.mu.Unlock()
	n := len(src.refused)
	for t := range src.refused {
		if with[t] == 0 {
			delete(src.refused, t)
		}
	}
	if len(src.refused) != n {
		src.setReadyLocked()
	}
}

// refusedShown is the most refusals /readyz lists.
const refusedShown = 3

func (src *source) setReadyLocked() {
	if len(src.refused) == 0 {
		src.s.host.Admin().Ready(checkConsumer)
		return
	}
	reasons := make([]string, 0, len(src.refused))
	for _, r := range src.refused {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	if len(reasons) > refusedShown {
		reasons = append(reasons[:refusedShown], fmt.Sprintf("and %d more", len(reasons)-refusedShown))
	}
	src.s.host.Admin().NotReady(checkConsumer, strings.Join(reasons, "; "))
}

// recreate makes the tenant's consumer again, unless another worker (or
// the poller) already replaced old, and logs it.
func (src *source) recreate(ctx context.Context, tenant, why string, old fetcher) error {
	src.remaking.Lock()
	defer src.remaking.Unlock()
	if cur := src.sched.consumer(tenant); old != nil && cur != old {
		return nil // already made again
	}
	if err := src.create(ctx, tenant); err != nil {
		return err
	}
	src.logger.Warn("consumer recreated", zap.String("consumer", ConsumerName(tenant)), zap.String("tenant", tenant), zap.String("why", why))
	return nil
}

// deleteLegacy deletes the shared consumer of older partitioners, if it
// is there.
func (src *source) deleteLegacy(ctx context.Context) error {
	err := src.js.DeleteConsumer(ctx, streams.Ingest, LegacyConsumerName)
	if err == nil {
		src.logger.Info("deleted the shared consumer of older partitioners", zap.String("consumer", LegacyConsumerName))
		return nil
	}
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	return fmt.Errorf("delete consumer %s: %w", LegacyConsumerName, err)
}

// gone reports whether a fetch failed because the consumer is not there
// (deleted, or lost in a NATS restart with an empty store): nobody
// answers its pull requests.
func gone(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrConsumerDeleted)
}

// inputUnit is the partitioner's input as the liveness poller watches it,
// every InfoInterval: the tenants' consumers' lag sets the metrics and
// feeds the one input watchdog (progress is any request settled), and a
// stall makes every known tenant's consumer again. A consumer that is gone
// is made again by the worker whose fetch finds it gone, and a tenant
// whose messages wait while others flow by discovery (see discover).
type inputUnit struct {
	s   *Service
	src *source
}

// Watchdog is the input's stall watchdog.
func (in inputUnit) Watchdog() *liveness.Watchdog { return in.s.wd }

// Backlog is the requests waiting in INGEST or unacked, summed over the
// tenants' consumers.
func (in inputUnit) Backlog(ctx context.Context) (uint64, error) {
	lag, err := in.src.lag(ctx)
	if err != nil {
		return 0, err
	}
	in.s.m.setLag(lag)
	return lag.pending + lag.ackPending, nil
}

// Repair makes every known tenant's consumer again.
func (in inputUnit) Repair(ctx context.Context, why string) error {
	var errs []error
	for _, tenant := range in.src.sched.names() {
		errs = append(errs, in.src.recreate(ctx, tenant, why, nil))
	}
	return errors.Join(errs...)
}

// waitingOn is what a worker waits on, with the last failure to settle a
// request when none was acked since: the stall report then says why.
func (s *Service) waitingOn(what string) string {
	if f := s.failure.Load(); f != nil {
		return what + " (last failure: " + *f + ")"
	}
	return what
}
