package sink

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
)

// The sink's part in the agreed schema (package schema): batchers agree on
// the columns and the sink makes them real. It writes the operator's
// declared columns into the schema at start, typed for the oldest server,
// and creates them; and a reconciler compares the schema with every
// replica's table every ReconcileEvery: a column agreed but missing (its
// proposer's batches never reached this replica, or the DDL was lost with
// a crash) is added, and a column whose type an operator changed by hand
// is adopted, so batchers fill it as it now is.

// reconcileEvery is how often the reconciler runs (Service.reconcileEvery
// in tests).
const reconcileEvery = time.Minute

// reconcileGrace is how old an agreed column must be before the
// reconciler adds it: younger ones are on their way with their batches.
const reconcileGrace = 30 * time.Second

// schemaRegistry is the registry the sink reads, once opened.
type schemaRegistry struct {
	reg atomic.Pointer[schema.Registry]
}

// column is what the registry knows of column name; nil before the
// registry is open or when it knows nothing.
func (r *schemaRegistry) column(name string) *schema.Col {
	reg := r.reg.Load()
	if reg == nil {
		return nil
	}
	return reg.Current().Doc.Columns[name]
}

// runSchema opens the registry, declares the operator's columns, then
// watches and reconciles until ctx ends. The sink inserts meanwhile: a
// batch's own columns never wait for it.
func (s *Service) runSchema(ctx context.Context, js jetstream.JetStream, servers []*server) {
	reg, err := schema.OpenRegistryRetrying(ctx, js, s.cfg.Schema.Table, s.cfg.Streams.Replicas, natsTimeout, s.cfg.Retry,
		func(attempt int, err error, wait time.Duration) {
			s.log.Warn("open schema bucket, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		})
	if err != nil {
		return // ctx ended
	}
	s.schema.reg.Store(reg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		reg.Follow(ctx, s.cfg.Retry, func(err error, wait time.Duration) {
			s.log.Warn("schema watch stopped, watching again", zap.Duration("wait", wait), zap.Error(err))
		})
	}()
	defer func() { <-done }()

	if len(s.cfg.Schema.Columns) > 0 {
		s.declare(ctx, reg, servers)
	}
	every := s.reconcileEvery
	if every == 0 {
		every = reconcileEvery
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		s.reconcile(ctx, reg, servers)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// declare writes the declared columns into the schema, typed for the
// oldest server, and adds them to every server, retrying until done or
// ctx ends.
func (s *Service) declare(ctx context.Context, reg *schema.Registry, servers []*server) {
	err := retry.Do(ctx, s.cfg.Retry, func() error {
		oldest, err := s.oldestServer(ctx, servers)
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		var skipped []string
		uctx, cancel := context.WithTimeout(ctx, natsTimeout)
		snap, err := reg.Update(uctx, func(d *schema.Doc) (*schema.Doc, bool) {
			next, changed, sk := schema.Declare(d, s.cfg.Schema, oldest, now)
			skipped = sk
			return next, changed
		})
		cancel()
		if err != nil {
			return err
		}
		for _, sk := range skipped {
			s.log.Warn("declared column left as the schema has it", zap.String("column", sk))
		}
		return s.ensureColumns(ctx, servers, snap.Doc, func(*schema.Col) bool { return true })
	}, func(attempt int, err error, wait time.Duration) {
		s.log.Warn("declare columns, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err == nil {
		s.log.Info("declared columns in place", zap.Int("columns", len(s.cfg.Schema.Columns)))
	}
}

// oldestServer is the release of the oldest server that answers.
func (s *Service) oldestServer(ctx context.Context, servers []*server) (schema.Server, error) {
	var oldest *schema.Server
	var errs []error
	for _, srv := range servers {
		for _, r := range srv.replicas {
			c, err := srv.keeper.refresh(ctx, r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			oldest = older(oldest, c.server)
		}
	}
	if oldest == nil {
		return schema.Server{}, errors.Join(errs...)
	}
	return *oldest, nil
}

// older is the older of *oldest (nil for none yet) and s.
func older(oldest *schema.Server, s schema.Server) *schema.Server {
	if oldest == nil || !s.AtLeast(oldest.Major, oldest.Minor) {
		return &s
	}
	return oldest
}

// ensureColumns adds the columns of doc that want selects to every
// server's events_local where missing (one replica per shard: a
// replicated table carries the ALTER to the others), and from there to
// every Distributed table.
func (s *Service) ensureColumns(ctx context.Context, servers []*server, doc *schema.Doc, want func(*schema.Col) bool) error {
	var cols []batch.Column
	for _, name := range slices.Sorted(maps.Keys(doc.Columns)) {
		c := doc.Columns[name]
		if _, failed := doc.Failed[name]; failed || !want(c) || c.Kind() == 0 {
			continue
		}
		cols = append(cols, batch.Column{Name: name, Kind: c.Kind()})
	}
	if len(cols) == 0 {
		return nil
	}
	var errs []error
	for _, srv := range servers {
		i, r := srv.use(-1)
		_, _, err := srv.keeper.ensure(ctx, srv, r, cols)
		errs = append(errs, srv.done(-1, i, err))
	}
	return errors.Join(errs...)
}

// reconcile compares the schema with every replica's table: it adds the
// agreed columns older than reconcileGrace that a replica's local or
// Distributed table lacks (a sink that crashed between the local ALTER and
// the Distributed one), and
// adopts a type an operator set by hand, once every replica that holds
// the column holds it with that type (an operator's ALTER half done on the
// cluster is not adopted, and never flips back and forth).
func (s *Service) reconcile(ctx context.Context, reg *schema.Registry, servers []*server) {
	snap := reg.Current()
	if len(snap.Doc.Columns) == 0 {
		return
	}
	now := time.Now().UTC()
	var missing bool
	seen := make(map[string]map[string]bool) // column -> types held
	var oldest *schema.Server
	for _, srv := range servers {
		for _, r := range srv.replicas {
			c, err := srv.keeper.refresh(ctx, r)
			if err != nil {
				s.log.Debug("reconcile: read columns", zap.String("addr", r.addr), zap.Error(err))
				continue
			}
			oldest = older(oldest, c.server)
			var dist []schema.ColumnDef
			for name, col := range snap.Doc.Columns {
				old := now.Sub(col.Added) >= reconcileGrace
				if _, failed := snap.Doc.Failed[name]; failed || col.Kind() == 0 {
					continue
				}
				if _, ok := c.dist[name]; !ok && old {
					dist = append(dist, schema.ColumnDef{Name: name, Type: schema.ColumnType(col.Kind(), col.CHType, c.server), Path: col.Path})
				}
				have, ok := c.local[name]
				if !ok {
					missing = missing || old
					continue
				}
				if seen[name] == nil {
					seen[name] = make(map[string]bool)
				}
				seen[name][have] = true
			}
			if len(dist) > 0 {
				// The Distributed table follows the local ones: the
				// keeper adds them in the background, local first.
				srv.keeper.want(nil, map[*replica][]schema.ColumnDef{r: dist})
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(seen)) {
		col := snap.Doc.Columns[name]
		if len(seen[name]) != 1 || col.Kind() == 0 {
			continue
		}
		for have := range seen[name] {
			if have != schema.ColumnType(col.Kind(), col.CHType, *oldest) && have != col.CHType {
				s.adopt(ctx, reg, name, have)
			}
		}
	}
	if !missing {
		return
	}
	err := s.ensureColumns(ctx, servers, snap.Doc, func(c *schema.Col) bool { return now.Sub(c.Added) >= reconcileGrace })
	if err != nil && ctx.Err() == nil {
		s.log.Warn("reconcile: add agreed columns a server lacks", zap.Error(err))
	}
}

// adopt takes over the type an operator gave column name.
func (s *Service) adopt(ctx context.Context, reg *schema.Registry, name, chType string) {
	uctx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	snap, err := reg.Update(uctx, func(d *schema.Doc) (*schema.Doc, bool) {
		return schema.Adopt(d, name, chType, time.Now().UTC())
	})
	if err != nil {
		s.log.Warn("reconcile: adopt a column's type", zap.String("column", name), zap.String("type", chType), zap.Error(err))
		return
	}
	if reason, failed := snap.Doc.Failed[name]; failed {
		s.log.Warn("column's type set by hand cannot be filled; its values stay in properties", zap.String("column", name), zap.String("reason", reason))
		return
	}
	s.log.Info("adopted a column's type set by hand", zap.String("column", name), zap.String("type", chType))
}
