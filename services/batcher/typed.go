package batcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/failpoint"
	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
)

// typer projects each cut batch's properties into typed columns, against
// the schema every batcher agrees on: the batch's new keys are proposed
// to the schema bucket by compare-and-swap (one writer wins a change, the
// others adopt it), then the batch is projected on the schema in force.
// The projection travels in the immutable BATCHES message, so every
// retry, failover or new owner of the sink inserts the identical block.
type typer struct {
	cfg     schema.Config
	reg     *schema.Registry
	proj    *schema.Projector
	m       *typedMetrics
	log     *zap.Logger
	timeout time.Duration
	// problems records what each tenant's events ran into: conflicts and
	// keys a limit left unpromoted.
	problems *problems.Recorder
	// details say in words why a path is a problem, by reason: written
	// once, as a key explosion brings thousands of paths a batch.
	details map[string]string
}

// newTyper opens the schema bucket, retrying until it answers or ctx ends.
func newTyper(ctx context.Context, js jetstream.JetStream, cfg schema.Config, replicas int, timeout time.Duration,
	rc retry.Config, m *typedMetrics, rec *problems.Recorder, log *zap.Logger) (*typer, error) {
	proj, err := schema.NewProjector(cfg)
	if err != nil {
		return nil, err
	}
	reg, err := schema.OpenRegistryRetrying(ctx, js, cfg.Table, replicas, timeout, rc, func(attempt int, err error, wait time.Duration) {
		log.Warn("open schema bucket, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err != nil {
		return nil, fmt.Errorf("schema registry: %w", err)
	}
	t := &typer{cfg: cfg, reg: reg, proj: proj, m: m, log: log, timeout: timeout, problems: rec, details: pathDetails(cfg)}
	t.observe(reg.Current())
	return t, nil
}

// watch keeps the schema current until ctx ends, starting the watch again
// when it fails.
func (t *typer) watch(ctx context.Context, rc retry.Config) {
	t.reg.Follow(ctx, rc, func(err error, wait time.Duration) {
		t.log.Warn("schema watch stopped, watching again", zap.Duration("wait", wait), zap.Error(err))
	})
}

// project fills b's typed columns, proposing the batch's new keys first
// when propose is set. A proposal that fails (NATS down, every
// compare-and-swap lost) or is not made leaves the batch's new keys in
// _unpromoted: the batch still moves, and a later batch proposes them
// again.
func (t *typer) project(ctx context.Context, b *batch.Batch, propose bool) {
	parsed := t.proj.Parse(b)
	defer t.proj.Release(parsed)
	now := time.Now().UTC()
	snap := t.reg.Current()
	if !propose {
		t.count(t.proj.Project(parsed, snap.Doc, b), b)
		return
	}
	if _, changed := t.proj.Plan(parsed, snap.Doc, now); changed {
		uctx, cancel := context.WithTimeout(ctx, t.timeout)
		next, err := t.reg.Update(uctx, func(d *schema.Doc) (*schema.Doc, bool) { return t.proj.Plan(parsed, d, now) })
		cancel()
		switch {
		case err == nil:
			if next.Wrote {
				t.m.changes.Inc()
				t.log.Info("schema changed", zap.Uint64("revision", next.Rev), zap.Int("columns", len(next.Doc.Columns)))
				failpoint.Stop(failpoint.BatcherSchemaWritten)
			}
			snap = next
		case errors.Is(err, schema.ErrContended):
			snap = next
			t.log.Warn("schema proposal lost every compare-and-swap; new keys stay unpromoted in this batch", zap.String("batch_id", b.ID()))
		default:
			t.m.proposalErrors.Inc()
			t.log.Warn("schema proposal failed; new keys stay unpromoted in this batch", zap.String("batch_id", b.ID()), zap.Error(err))
		}
	}
	t.count(t.proj.Project(parsed, snap.Doc, b), b)
	t.observe(snap)
}

// count adds a batch's projection to the metrics and its tenants'
// problems: one Add per (tenant, reason, path) of the batch, with the
// event_id of its first row.
func (t *typer) count(stats schema.Stats, b *batch.Batch) {
	t.m.count(stats)
	for _, c := range stats.Paths {
		k := c.Key
		reason := problems.ReasonUnpromotedKey
		if k.Conflict {
			reason = problems.ReasonTypeConflict
		}
		var id string
		if c.Row < len(b.EventID) {
			id = b.EventID[c.Row]
		}
		t.problems.AddN(k.Tenant, reason, k.Path, c.N, problems.Sample{ID: id, Detail: t.pathDetail(k)})
	}
}

// pathDetails say in words why a path is a problem, by reason.
func pathDetails(cfg schema.Config) map[string]string {
	return map[string]string{
		schema.ReasonType:        "value does not fit the type of the path's column; kept in _conflicts",
		schema.ReasonCollision:   "another path's column has this path's name; value kept in _conflicts",
		schema.ReasonKeys:        fmt.Sprintf("past the first %d keys of an event (schema.max_keys_per_event)", cfg.MaxKeysPerEvent),
		schema.ReasonTenantLimit: fmt.Sprintf("the tenant's events introduced %d columns (schema.max_columns_per_tenant)", cfg.MaxColumnsPerTenant),
		schema.ReasonTableLimit:  fmt.Sprintf("the table has %d columns (schema.max_columns)", cfg.MaxColumns),
		schema.ReasonRate:        fmt.Sprintf("%d columns were added this hour (schema.max_new_columns_per_hour)", cfg.MaxNewColumnsPerHour),
	}
}

// pathDetail says in words why a path is a problem.
func (t *typer) pathDetail(k schema.PathKey) string {
	if d, ok := t.details[k.Reason]; ok {
		return d
	}
	return k.Reason
}

// observe exports the size of the schema in force: the columns against
// their limits, per table, per tenant and in the hour's window.
func (t *typer) observe(s schema.Snapshot) {
	t.m.columns.Set(float64(len(s.Doc.Columns)))
	t.m.revision.Set(float64(s.Rev))
	perTenant := make(map[string]int)
	for _, c := range s.Doc.Columns {
		if c.Tenant != "" {
			perTenant[c.Tenant]++
		}
	}
	for tenant, n := range perTenant {
		t.m.tenantColumns.WithLabelValues(tenant).Set(float64(n))
	}
	added := 0
	if time.Since(s.Doc.Rate.WindowStart) < time.Hour {
		added = s.Doc.Rate.Added
	}
	t.m.hourColumns.Set(float64(added))
}

// typedMetrics are the batcher's schema series, labelled by table.
type typedMetrics struct {
	columns, limit, revision  prometheus.Gauge
	hourColumns               prometheus.Gauge
	tenantColumns             *prometheus.GaugeVec
	changes, proposalErrors   prometheus.Counter
	conflicts, unpromoted     *prometheus.CounterVec
	mu                        sync.Mutex
	conflictsBy, unpromotedBy map[string]prometheus.Counter
}

func newTypedMetrics(reg prometheus.Registerer, cfg schema.Config) *typedMetrics {
	f := promauto.With(reg)
	table := prometheus.Labels{"table": cfg.Table}
	m := &typedMetrics{
		columns: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_schema_columns", ConstLabels: table,
			Help: "Typed property columns in the agreed schema of the table.",
		}),
		limit: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_schema_column_limit", ConstLabels: table,
			Help: "The most typed property columns the table may have (schema.max_columns).",
		}),
		revision: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_schema_revision", ConstLabels: table,
			Help: "Revision of the agreed schema in force at this batcher.",
		}),
		hourColumns: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_schema_hour_columns", ConstLabels: table,
			Help: "Typed columns added in the schema's current hour window; new keys are unpromoted (reason rate) once it reaches surge_schema_hour_column_limit.",
		}),
		tenantColumns: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_schema_tenant_columns", ConstLabels: table,
			Help: "Typed columns a tenant's events introduced; its new keys are unpromoted (reason tenant_limit) once it reaches surge_schema_tenant_column_limit.",
		}, []string{"tenant"}),
		changes: f.NewCounter(prometheus.CounterOpts{
			Name: "surge_schema_changes_total", ConstLabels: table,
			Help: "Schema changes this batcher wrote (compare-and-swap won).",
		}),
		proposalErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "surge_schema_proposal_errors_total", ConstLabels: table,
			Help: "Schema proposals that failed (NATS unavailable); their keys stayed unpromoted in their batch.",
		}),
		conflicts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_schema_conflicts_total", ConstLabels: table,
			Help: "Property values that did not fit their column, kept in _conflicts, by reason (type, collision).",
		}, []string{"reason"}),
		unpromoted: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_schema_unpromoted_total", ConstLabels: table,
			Help: "Property values left out of the typed columns, listed in _unpromoted, by reason (rate, table_limit, tenant_limit, deny, keys, declared, failed, pending).",
		}, []string{"reason"}),
		conflictsBy:  make(map[string]prometheus.Counter),
		unpromotedBy: make(map[string]prometheus.Counter),
	}
	m.limit.Set(float64(cfg.MaxColumns))
	for _, l := range []struct {
		name, help string
		v          int
	}{
		{"surge_schema_hour_column_limit", "Typed columns the table may gain in an hour (schema.max_new_columns_per_hour).", cfg.MaxNewColumnsPerHour},
		{"surge_schema_tenant_column_limit", "Typed columns one tenant's events may introduce (schema.max_columns_per_tenant).", cfg.MaxColumnsPerTenant},
		{"surge_schema_keys_per_event_limit", "Flattened keys of one event considered for columns (schema.max_keys_per_event); the rest are unpromoted (reason keys).", cfg.MaxKeysPerEvent},
		{"surge_schema_depth_limit", "How deep properties are flattened (schema.max_depth); deeper objects are one string column of JSON text.", cfg.MaxDepth},
	} {
		f.NewGauge(prometheus.GaugeOpts{Name: l.name, Help: l.help, ConstLabels: table}).Set(float64(l.v))
	}
	return m
}

// count adds one batch's projection to the counters.
func (m *typedMetrics) count(s schema.Stats) {
	for reason, n := range s.Conflicts {
		m.counter(m.conflicts, m.conflictsBy, reason).Add(float64(n))
	}
	for reason, n := range s.Unpromoted {
		m.counter(m.unpromoted, m.unpromotedBy, reason).Add(float64(n))
	}
}

func (m *typedMetrics) counter(vec *prometheus.CounterVec, by map[string]prometheus.Counter, reason string) prometheus.Counter {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := by[reason]
	if !ok {
		c = vec.WithLabelValues(reason)
		by[reason] = c
	}
	return c
}
