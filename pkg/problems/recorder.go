package problems

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
)

// Publisher is what a flush needs of JetStream; jetstream.JetStream is one.
type Publisher interface {
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

var _ Publisher = jetstream.JetStream(nil)

// Recorder aggregates the problems a service meets and publishes them to
// PROBLEMS: one message per (tenant, reason, field) per interval.
//
// Add is cheap and never blocks on I/O: it counts into a map under a
// mutex. The map holds at most MaxKeys keys per interval; the problems of
// further keys are counted into one aggregate of tenant Overflow (and
// surge_<service>_problems_overflow_total), so a flood of distinct fields
// costs bounded memory. Run flushes every interval and once more when it
// stops. A flush that fails is logged and counted
// (surge_<service>_problems_flush_failures_total); its aggregates are
// published again at the next flush, once, then dropped
// (surge_<service>_problems_dropped_total): at most two intervals' keys
// are ever held.
//
// surge_<service>_problems_total{reason} counts every problem Added. It
// has no tenant label: the partitioner and the batcher meet any tenant a
// producer's credentials or an event names, with no list of tenants to
// bound the label by, and one metric should read the same in every
// service; per tenant, the PROBLEMS stream answers (GET /v1/problems,
// `surge problems`).
type Recorder struct {
	service  string
	maxKeys  int
	interval time.Duration
	timeout  time.Duration
	log      *zap.Logger
	now      func() time.Time

	mu   sync.Mutex
	aggs map[key]*Aggregate

	// flushMu makes flushes one at a time; retry is what the last one
	// failed to publish, with the message id of each.
	flushMu sync.Mutex
	retry   []pending
	// id and seq name each aggregate's message (Nats-Msg-Id), so a
	// retried publish that JetStream had stored is dropped as a duplicate.
	id  string
	seq uint64

	total         map[string]prometheus.Counter
	overflow      prometheus.Counter
	flushFailures prometheus.Counter
	dropped       prometheus.Counter
}

type key struct{ tenant, reason, field string }

type pending struct {
	agg   *Aggregate
	msgID string
}

// Option configures a Recorder.
type Option func(*Recorder) error

// WithMaxKeys bounds the distinct (tenant, reason, field) keys held per
// interval (default 1,000).
func WithMaxKeys(n int) Option {
	return func(r *Recorder) error {
		if n < 1 {
			return fmt.Errorf("max keys must be at least 1, got %d", n)
		}
		r.maxKeys = n
		return nil
	}
}

// WithInterval sets how often Run flushes (default 1 s).
func WithInterval(d time.Duration) Option {
	return func(r *Recorder) error {
		if d <= 0 {
			return fmt.Errorf("interval must be positive, got %s", d)
		}
		r.interval = d
		return nil
	}
}

// WithPublishTimeout bounds the wait for each PubAck of a flush (default
// 2 s); the first failure ends the flush, the rest wait for the next.
func WithPublishTimeout(d time.Duration) Option {
	return func(r *Recorder) error {
		if d <= 0 {
			return fmt.Errorf("publish timeout must be positive, got %s", d)
		}
		r.timeout = d
		return nil
	}
}

// WithLogger logs flush failures (default: none).
func WithLogger(l *zap.Logger) Option {
	return func(r *Recorder) error {
		if l == nil {
			return errors.New("logger is nil")
		}
		r.log = l
		return nil
	}
}

// WithClock sets the clock of First and Last, for tests.
func WithClock(now func() time.Time) Option {
	return func(r *Recorder) error {
		if now == nil {
			return errors.New("clock is nil")
		}
		r.now = now
		return nil
	}
}

// NewRecorder builds the Recorder of service ("ingest", "partitioner",
// ...), registering its metrics, surge_<service>_problems_*, on reg.
func NewRecorder(service string, reg prometheus.Registerer, opts ...Option) (*Recorder, error) {
	if service == "" {
		return nil, errors.New("problems: service name is required")
	}
	var id [6]byte
	_, _ = rand.Read(id[:]) // never fails
	r := &Recorder{
		service:  service,
		maxKeys:  1000,
		interval: time.Second,
		timeout:  2 * time.Second,
		log:      zap.NewNop(),
		now:      time.Now,
		aggs:     make(map[key]*Aggregate),
		id:       service + ":" + hex.EncodeToString(id[:]),
		total:    make(map[string]prometheus.Counter, len(Reasons)+1),
	}
	var errs []error
	for _, o := range opts {
		errs = append(errs, o(r))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("problems: %w", err)
	}
	f := promauto.With(reg)
	total := f.NewCounterVec(prometheus.CounterOpts{
		Name: "surge_" + service + "_problems_total",
		Help: "Problems of tenants' events met, by reason (the PROBLEMS stream has them per tenant).",
	}, []string{"reason"})
	for _, reason := range append(slices.Clone(Reasons), otherReason) {
		r.total[reason] = total.WithLabelValues(reason)
	}
	r.overflow = f.NewCounter(prometheus.CounterOpts{
		Name: "surge_" + service + "_problems_overflow_total",
		Help: "Problems counted in the overflow aggregate (tenant _overflow): past the distinct keys one flush interval holds.",
	})
	r.flushFailures = f.NewCounter(prometheus.CounterOpts{
		Name: "surge_" + service + "_problems_flush_failures_total",
		Help: "Problem aggregates whose publish to PROBLEMS failed (retried once at the next flush).",
	})
	r.dropped = f.NewCounter(prometheus.CounterOpts{
		Name: "surge_" + service + "_problems_dropped_total",
		Help: "Problem aggregates given up after their retry failed too.",
	})
	return r, nil
}

// Add records one problem of tenant's: reason is one of Reasons, field the
// event field or property path ("" for none), s a sample (kept, clipped,
// when the aggregate has fewer than MaxSamples). An invalid tenant is
// recorded as Unknown. Add never blocks on I/O and is safe for concurrent
// use.
func (r *Recorder) Add(tenant, reason, field string, s Sample) {
	r.AddN(tenant, reason, field, 1, s)
}

// AddN records n problems of one key at once, with one sample: a service
// that aggregates per batch adds each key once.
func (r *Recorder) AddN(tenant, reason, field string, n int, s Sample) {
	if r == nil || n <= 0 {
		return
	}
	if !event.ValidTenant(tenant) {
		tenant = Unknown
	}
	c, ok := r.total[reason]
	if !ok {
		c = r.total[otherReason]
	}
	c.Add(float64(n))
	field = cut(field, MaxField)
	k := key{tenant, reason, field}
	now := r.now()

	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.aggs[k]
	overflow := false
	if !ok {
		if len(r.aggs) >= r.maxKeys {
			overflow = true
			r.overflow.Add(float64(n))
			k = key{Overflow, ReasonOverflow, ""}
			a, ok = r.aggs[k]
		}
		if !ok {
			k.tenant, k.reason, k.field = strings.Clone(k.tenant), strings.Clone(k.reason), strings.Clone(k.field)
			a = &Aggregate{Tenant: k.tenant, Reason: k.reason, Field: k.field, First: now, Service: r.service}
			r.aggs[k] = a
		}
	}
	a.Count += int64(n)
	a.Last = now
	if len(a.Samples) < MaxSamples {
		if overflow { // say what the problem was, for the operator
			s = Sample{ID: s.ID, Detail: "tenant " + tenant + ", reason " + reason + ", field " + field}
		}
		a.Samples = append(a.Samples, s.clip())
	}
}

// Run flushes to js every interval until ctx ends, then flushes once more,
// within the publish timeout, and returns. Failures are logged and
// counted, never returned: problems are worth a retry, not a service.
func (r *Recorder) Run(ctx context.Context, js Publisher) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// A final flush of what the service met while it stopped.
			fctx, cancel := context.WithTimeout(context.Background(), r.timeout)
			r.flushAndLog(fctx, js)
			cancel()
			return
		case <-t.C:
			r.flushAndLog(ctx, js)
		}
	}
}

func (r *Recorder) flushAndLog(ctx context.Context, js Publisher) {
	if _, err := r.Flush(ctx, js); err != nil {
		r.log.Warn("publish problems, retrying at the next flush", zap.Error(err))
	}
}

// Flush publishes what the last failed flush left, then every aggregate
// held, one PROBLEMS message each, and empties the map. It stops at the
// first failure: what was not published is held for the next flush, once
// (an aggregate that already failed is dropped). It returns how many were
// published and the error that stopped it.
func (r *Recorder) Flush(ctx context.Context, js Publisher) (int, error) {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	held := r.aggs
	if len(held) > 0 {
		r.aggs = make(map[key]*Aggregate, len(held))
	} else {
		held = nil // r.aggs stays, and Add may write it once unlocked
	}
	r.mu.Unlock()

	retried := len(r.retry)
	todo := append(r.retry, r.sorted(held)...)
	r.retry = nil
	published := 0
	var err error
	for i, p := range todo {
		if err == nil {
			if err = r.publish(ctx, js, p); err == nil {
				published++
				continue
			}
		}
		r.flushFailures.Inc()
		if i < retried {
			r.dropped.Inc()
			continue
		}
		r.retry = append(r.retry, p)
	}
	return published, err
}

// sorted gives the aggregates their message ids, in a stable order.
func (r *Recorder) sorted(held map[key]*Aggregate) []pending {
	out := make([]pending, 0, len(held))
	for _, a := range held {
		out = append(out, pending{agg: a})
	}
	slices.SortFunc(out, func(x, y pending) int {
		return strings.Compare(x.agg.Tenant+"\x00"+x.agg.Reason+"\x00"+x.agg.Field, y.agg.Tenant+"\x00"+y.agg.Reason+"\x00"+y.agg.Field)
	})
	for i := range out {
		r.seq++
		out[i].msgID = r.id + ":" + strconv.FormatUint(r.seq, 10)
	}
	return out
}

func (r *Recorder) publish(ctx context.Context, js Publisher, p pending) error {
	data, err := json.Marshal(p.agg)
	if err != nil {
		return fmt.Errorf("encode problems: %w", err) // not reached: plain fields
	}
	m := nats.NewMsg(streams.ProblemsSubject(p.agg.Tenant))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, p.msgID)
	pctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	if _, err := js.PublishMsg(pctx, m, jetstream.WithExpectStream(streams.Problems)); err != nil {
		return fmt.Errorf("publish %s: %w", m.Subject, err)
	}
	return nil
}
