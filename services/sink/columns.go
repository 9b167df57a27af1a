package sink

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/failpoint"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/schema"
)

// RegistryColumn is what the schema registry knows of the typed column
// name: its ClickHouse type when an operator declared or set one (CHType)
// and the JSON Pointer of its property (Path); nil when it knows nothing.
// The sink uses the type for the column's DDL and the pointer for its
// comment and for the _conflicts key of a value the table's type cannot
// hold.
type RegistryColumn func(name string) *schema.Col

// tableColumns are the columns of one replica's events_local (local) and
// events (dist), name -> ClickHouse type, as read at one moment, and the
// server's release. Never changed once read: a new read makes a new one.
type tableColumns struct {
	server      schema.Server
	local, dist map[string]string
}

// lacks are the names of cols that table does not have.
func lacks(table map[string]string, cols []batch.Column) []string {
	var out []string
	for i := range cols {
		if _, ok := table[cols[i].Name]; !ok {
			out = append(out, cols[i].Name)
		}
	}
	return out
}

// columnKeeper makes sure every column a batch names exists in
// events_local of the replica the batch is inserted into, before the
// insert, and brings tables made by older code to the current table
// version (the base columns they lack). It keeps, per replica, the
// columns of both tables as last read from system.columns.
//
// A column missing on the replica is added there by one ALTER TABLE ...
// ADD COLUMN for all the batch's missing columns (never ON CLUSTER: on
// 18.16 it blocks for distributed_ddl_task_timeout on every server that is
// down); the insert waits for it. A Replicated table carries the ALTER to
// the other replicas of the shard itself. Then, in the background, the
// column is added to the local table of every other ClickHouse shard and,
// once every shard has it, to the Distributed table of every server, so a
// query through events sees it; a failure there is logged, counted and
// tried again later, and never holds an insert back. The same column
// proposed by many shard loops at once is added once per server: the DDL
// of a shard's local table is serialised (server.ddl) and reads the
// columns again first, and concurrent requests for the same columns share
// one attempt.
//
// Every DDL statement is bounded by the insert timeout and, on releases
// whose Replicated ALTER waits for the other replicas, by
// replication_alter_columns_timeout; Code 341 (replicas inactive, the
// ALTER will finish there asynchronously) counts as done on this replica,
// Code 44 (18.16) or 15 (current releases) as done by someone else.
type columnKeeper struct {
	database string
	// timeout bounds each DDL statement, each read of the columns and the
	// wait for added columns to show.
	timeout time.Duration
	log     *zap.Logger
	m       *metrics
	// lookup is the registry's knowledge of a column; nil knows nothing.
	lookup RegistryColumn
	// servers are every ClickHouse shard of the sink.
	servers []*server

	flight singleflight.Group

	// ctx ends at close, and with it the background work (wg).
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu sync.Mutex
	// wantLocal are columns a server's local table should get, and
	// wantDist columns a replica's Distributed table should get, not yet
	// known done; spreading says the background worker runs.
	wantLocal map[*server]map[string]schema.ColumnDef
	wantDist  map[*replica]map[string]schema.ColumnDef
	spreading bool
	// seen counts each replica's property columns per table, for the
	// surge_sink_schema_columns gauge (the most any replica has).
	seen map[*replica][2]int
}

// Bounds of the background spreading's retries.
const (
	spreadRetryInitial = 200 * time.Millisecond
	spreadRetryMax     = 10 * time.Second
)

// columnPoll is how often a replica is read until added columns show.
const columnPoll = 50 * time.Millisecond

// replicaWait is how long, in seconds, a Replicated ALTER on 18.16 waits
// for the other replicas of its shard before Code 341: 5, or a quarter of
// the timeout when that is shorter, so that the ALTER and the insert after
// it fit in one insert's time.
func replicaWait(timeout time.Duration) int {
	return int(min(5, max(1, timeout/4/time.Second)))
}

func newColumnKeeper(c ClickHouseConfig, servers []*server, log *zap.Logger, m *metrics, lookup RegistryColumn) *columnKeeper {
	if log == nil {
		log = zap.NewNop()
	}
	if m == nil {
		m = newMetrics(prometheus.NewRegistry())
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &columnKeeper{
		database: c.Database, timeout: c.InsertTimeout, log: log, m: m, lookup: lookup, servers: servers,
		ctx: ctx, cancel: cancel,
		wantLocal: make(map[*server]map[string]schema.ColumnDef),
		wantDist:  make(map[*replica]map[string]schema.ColumnDef),
		seen:      make(map[*replica][2]int),
	}
}

// shareKeeper gives every server of the sink one columnKeeper, so a column
// added on one shard reaches every shard's tables, and DDL counts in the
// sink's metrics. lookup may be nil.
func shareKeeper(c ClickHouseConfig, servers []*server, log *zap.Logger, m *metrics, lookup RegistryColumn) {
	k := newColumnKeeper(c, servers, log, m, lookup)
	for _, s := range servers {
		s.keeper.close()
		s.keeper = k
	}
}

// close stops the background DDL and waits for it; idempotent.
func (k *columnKeeper) close() {
	k.closeOnce.Do(func() {
		k.mu.Lock() // want starts no worker after this
		k.cancel()
		k.mu.Unlock()
		k.wg.Wait()
	})
}

// path is the JSON Pointer of the property column name holds, "" when
// the registry does not say.
func (k *columnKeeper) path(name string) string {
	if k.lookup == nil {
		return ""
	}
	if c := k.lookup(name); c != nil {
		return c.Path
	}
	return ""
}

// chType is the registry's ClickHouse type of column name, if any.
func (k *columnKeeper) chType(name string) string {
	if k.lookup == nil {
		return ""
	}
	if c := k.lookup(name); c != nil {
		return c.CHType
	}
	return ""
}

// ddlContext is the context of one DDL statement or read: bounded by the
// timeout, ended by close or by parent, carrying nothing else of parent
// (an insert's query id and settings stay the insert's).
func (k *columnKeeper) ddlContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(k.ctx, k.timeout)
	stop := context.AfterFunc(parent, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// shared runs fn once for every concurrent caller with the same key, in a
// context of its own (bounded by the timeout, ended by close) so that one
// caller giving up does not fail the others; a caller stops waiting when
// its ctx ends.
func (k *columnKeeper) shared(ctx context.Context, key string, fn func(ctx context.Context) error) error {
	ch := k.flight.DoChan(key, func() (any, error) {
		if !k.enter() {
			return nil, errKeeperClosed
		}
		defer k.wg.Done()
		fctx, cancel := k.ddlContext(context.Background())
		defer cancel()
		return nil, fn(fctx)
	})
	select {
	case res := <-ch:
		return res.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errKeeperClosed says the sink's connections are closing.
var errKeeperClosed = errors.New("clickhouse connections closing")

// enter counts a goroutine of the keeper's in k.wg, for close to wait for;
// false once close began.
func (k *columnKeeper) enter() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx.Err() != nil {
		return false
	}
	k.wg.Add(1)
	return true
}

// columns are replica r's columns as last read, reading them when never
// read (or forgotten).
func (k *columnKeeper) columns(ctx context.Context, r *replica) (*tableColumns, error) {
	if c := r.cols.Load(); c != nil {
		return c, nil
	}
	return k.refresh(ctx, r)
}

// refresh reads replica r's columns (and release) from the server, once
// for all concurrent callers.
func (k *columnKeeper) refresh(ctx context.Context, r *replica) (*tableColumns, error) {
	if err := k.shared(ctx, "read "+r.addr, func(ctx context.Context) error {
		_, err := k.read(ctx, r)
		return err
	}); err != nil {
		return nil, err
	}
	if c := r.cols.Load(); c != nil {
		return c, nil
	}
	return k.read(ctx, r) // forgotten meanwhile by a failed insert
}

// read reads replica r's columns and release, and keeps them.
func (k *columnKeeper) read(ctx context.Context, r *replica) (*tableColumns, error) {
	rctx, cancel := k.ddlContext(ctx)
	defer cancel()
	c, err := answer(rctx, func() (*tableColumns, error) {
		var version string
		if err := r.conn.QueryRow(rctx, VersionQuery).Scan(&version); err != nil {
			return nil, fmt.Errorf("read version: %w", err)
		}
		server, err := schema.ParseServer(version)
		if err != nil {
			return nil, fmt.Errorf("read version: %w", err)
		}
		c := &tableColumns{server: server, local: make(map[string]string), dist: make(map[string]string)}
		rows, err := r.conn.Query(rctx, ColumnsQuery, k.database)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var table, name, typ string
			if err := rows.Scan(&table, &name, &typ); err != nil {
				return nil, err
			}
			if table == "events_local" {
				c.local[name] = typ
			} else {
				c.dist[name] = typ
			}
		}
		return c, rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", r.addr, err)
	}
	r.cols.Store(c)
	k.count(r, c)
	return c, nil
}

// count updates surge_sink_schema_columns with replica r's columns.
func (k *columnKeeper) count(r *replica, c *tableColumns) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen[r] = [2]int{propertyColumns(c.local), propertyColumns(c.dist)}
	var most [2]int
	for _, n := range k.seen {
		most[0], most[1] = max(most[0], n[0]), max(most[1], n[1])
	}
	k.m.schemaColumns.WithLabelValues("events_local").Set(float64(most[0]))
	k.m.schemaColumns.WithLabelValues("events").Set(float64(most[1]))
}

// propertyColumns counts the typed columns of a table.
func propertyColumns(table map[string]string) int {
	n := 0
	for name := range table {
		if schema.ValidColumn(name) {
			n++
		}
	}
	return n
}

// migrate brings replica r's tables, which exist, to the current table
// version: it adds the base columns events_local lacks (a table made by
// older code), then those events lacks. A failure on the Distributed
// table is left to the background: inserts need only the local table.
func (k *columnKeeper) migrate(ctx context.Context, s *server, r *replica) error {
	c, err := k.refresh(ctx, r)
	if err != nil {
		return err
	}
	if defs := baseDefs(c.local); len(defs) > 0 {
		k.log.Info("migrating events_local", zap.String("replica", r.addr),
			zap.Int("from_version", tableVersion(c.local)), zap.Int("to_version", batch.TableVersion))
		if err := k.addLocal(ctx, s, r, defs); err != nil {
			return err
		}
		if c, err = k.columns(ctx, r); err != nil {
			return err
		}
	}
	if defs := baseDefs(c.dist); len(defs) > 0 {
		k.log.Info("migrating events", zap.String("replica", r.addr),
			zap.Int("from_version", tableVersion(c.dist)), zap.Int("to_version", batch.TableVersion))
		if err := k.addDist(ctx, r, defs); err != nil {
			k.log.Warn("migrate events: left to the background", zap.String("replica", r.addr), zap.Error(err))
			k.want(nil, map[*replica][]schema.ColumnDef{r: defs})
		}
	}
	return nil
}

// ensure makes sure events_local of replica r of server s holds every
// column of typed, adding those it lacks, and returns r's columns then,
// and whether it added any.
func (k *columnKeeper) ensure(ctx context.Context, s *server, r *replica, typed []batch.Column) (*tableColumns, bool, error) {
	c, err := k.columns(ctx, r)
	if err != nil {
		return nil, false, err
	}
	if len(lacks(c.local, typed)) == 0 {
		return c, false, nil
	}
	if c, err = k.refresh(ctx, r); err != nil {
		return nil, false, err
	}
	missing := lacks(c.local, typed)
	if len(missing) == 0 {
		return c, false, nil
	}
	var defs []schema.ColumnDef
	for i := range typed {
		col := &typed[i]
		if !slices.Contains(missing, col.Name) {
			continue
		}
		if !schema.ValidColumn(col.Name) || !col.Kind.Valid() {
			continue // never put into DDL; convertTyped sends its values to _conflicts
		}
		defs = append(defs, schema.ColumnDef{
			Name: col.Name, Type: schema.ColumnType(col.Kind, k.chType(col.Name), c.server), Path: k.path(col.Name),
		})
	}
	if len(defs) == 0 {
		return c, false, nil
	}
	key := "add " + r.addr + " " + strings.Join(missing, ",")
	if err := k.shared(ctx, key, func(ctx context.Context) error {
		return k.addLocal(ctx, s, r, defs)
	}); err != nil {
		return nil, false, err
	}
	failpoint.Stop(failpoint.SinkColumnAdded)
	c, err = k.columns(ctx, r)
	return c, err == nil, err
}

// typeChanged explains the driver refusing the values of typed column
// name, converted for its type in cols: when the replica's table has
// another type for it now (an operator changed it since the columns were
// read), the attempt failed on stale knowledge, and the next one converts
// to the new type: a transient error. Else the values do not fit the
// type: err, as permanent as the driver says.
func (k *columnKeeper) typeChanged(ctx context.Context, r *replica, cols *tableColumns, name string, err error) error {
	fresh, rerr := k.refresh(ctx, r)
	switch {
	case rerr != nil: // the cause is unknown: transient
		return fmt.Errorf("append column %s: %v; read columns again: %w", name, err, rerr)
	case fresh.local[name] != cols.local[name]:
		return fmt.Errorf("column %s of %s changed type from %s to %s; converting again (%v)",
			name, r.addr, cols.local[name], fresh.local[name], err)
	}
	return fmt.Errorf("append column %s: %w", name, err)
}

// addLocal adds the columns defs events_local of replica r of server s
// lacks, waits until r shows them, and has the rest of the cluster follow
// in the background: every other shard's local table, then every server's
// Distributed table.
func (k *columnKeeper) addLocal(ctx context.Context, s *server, r *replica, defs []schema.ColumnDef) error {
	s.ddl.Lock()
	err := k.add(ctx, r, "events_local", defs)
	s.ddl.Unlock()
	if err != nil {
		return err
	}
	if err := k.await(ctx, r, defs); err != nil {
		return err
	}
	k.awaitReplicas(ctx, s, r, defs)
	local := make(map[*server][]schema.ColumnDef)
	dist := make(map[*replica][]schema.ColumnDef)
	for _, other := range k.servers {
		if other != s {
			local[other] = defs
		}
		for _, rep := range other.replicas {
			dist[rep] = defs
		}
	}
	k.want(local, dist)
	return nil
}

// addDist adds the columns defs events of replica r lacks, each with the
// type r's local table has for it where it has it.
func (k *columnKeeper) addDist(ctx context.Context, r *replica, defs []schema.ColumnDef) error {
	c, err := k.refresh(ctx, r)
	if err != nil {
		return err
	}
	defs = slices.Clone(defs)
	for i := range defs {
		if typ, ok := c.local[defs[i].Name]; ok {
			defs[i].Type = typ
		}
	}
	return k.add(ctx, r, "events", defs)
}

// add runs the ALTER that adds to table on replica r the columns of defs
// it lacks (read again first), and reads the columns again after. A
// statement refused because a column exists (another sink added it
// meanwhile; on 18.16 that refuses all its columns) is made again for the
// columns still missing, a few times.
func (k *columnKeeper) add(ctx context.Context, r *replica, table string, defs []schema.ColumnDef) error {
	for range 3 {
		c, err := k.refresh(ctx, r)
		if err != nil {
			return err
		}
		have := c.local
		if table == "events" {
			have = c.dist
		}
		var missing []schema.ColumnDef
		for _, d := range defs {
			if _, ok := have[d.Name]; !ok {
				missing = append(missing, d)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		done, err := k.alter(ctx, r, c.server, table, missing)
		if err != nil {
			return err
		}
		if done {
			_, err := k.refresh(ctx, r)
			return err
		}
	}
	return fmt.Errorf("add columns to %s.%s on %s: each attempt found some of them there already, others missing", k.database, table, r.addr)
}

// alter runs one ALTER TABLE ... ADD COLUMN of defs on replica r, bounded,
// with its query logged. done says the columns were added (Code 341
// included); false with no error says a column existed (Code 44 or 15).
func (k *columnKeeper) alter(ctx context.Context, r *replica, server schema.Server, table string, defs []schema.ColumnDef) (done bool, err error) {
	stmt := schema.AddColumnsSQL(k.database, table, defs, server)
	actx, cancel := k.ddlContext(ctx)
	defer cancel()
	if table == "events_local" {
		if err := k.caughtUp(actx, r); err != nil {
			k.m.ddlErrors.WithLabelValues("replica_behind").Inc()
			return false, err
		}
	}
	actx = clickhouse.Context(actx, clickhouse.WithSettings(alterSettings(server, k.timeout)))
	start := time.Now()
	err = r.conn.Exec(actx, stmt)
	k.m.ddlSeconds.Observe(time.Since(start).Seconds())
	var ex *clickhouse.Exception
	switch {
	case err == nil:
		k.log.Info("columns added", zap.String("replica", r.addr), zap.String("table", table), zap.Strings("columns", defNames(defs)))
		return true, nil
	case errors.As(err, &ex) && ex.Code == 341: // UNFINISHED
		k.log.Warn("columns added on this replica; the shard's inactive replicas add them when back",
			zap.String("replica", r.addr), zap.String("table", table), zap.Strings("columns", defNames(defs)), zap.String("server_says", ex.Message))
		return true, nil
	case errors.As(err, &ex) && (ex.Code == 44 || ex.Code == 15): // ILLEGAL_COLUMN (18.16), DUPLICATE_COLUMN
		return false, nil
	}
	k.m.ddlErrors.WithLabelValues(errorCode(err)).Inc()
	return false, fmt.Errorf("add columns to %s.%s on %s: %w", k.database, table, r.addr, err)
}

// errReplicaBehind refuses a column ALTER on a replica that lags its
// shard's schema or cannot replicate now; the insert that wanted it fails
// over to another replica of the shard.
var errReplicaBehind = errors.New("replica behind its shard's schema in ZooKeeper")

// caughtUp checks, on a replicated events_local, that replica r may run a
// column ALTER: it replicates (not read-only, as a restarted replica is
// while its old ZooKeeper session lives on), and its table has every
// column of the shard's table in ZooKeeper. On ClickHouse 18.16 an ALTER
// writes the replica's own columns plus the new ones over ZooKeeper's
// list, so a lagging replica's ALTER drops, on every replica, the columns
// it has not applied yet, with their values. A table without replication
// passes.
func (k *columnKeeper) caughtUp(ctx context.Context, r *replica) error {
	type state struct {
		path              string
		readonly, expired uint8
	}
	st, err := answer(ctx, func() (state, error) {
		var st state
		err := r.conn.QueryRow(ctx, "SELECT zookeeper_path, is_readonly, is_session_expired FROM system.replicas WHERE database = ? AND table = 'events_local'", k.database).
			Scan(&st.path, &st.readonly, &st.expired)
		return st, err
	})
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("read replication state of %s: %w", r.addr, err)
	case st.readonly != 0 || st.expired != 0:
		return fmt.Errorf("%w: %s is read-only (its ZooKeeper session is not up)", errReplicaBehind, r.addr)
	}
	list, err := answer(ctx, func() (string, error) {
		var list string
		err := r.conn.QueryRow(ctx, "SELECT value FROM system.zookeeper WHERE path = ? AND name = 'columns'", st.path).Scan(&list)
		return list, err
	})
	if err != nil {
		return fmt.Errorf("read the shard's columns in ZooKeeper from %s: %w", r.addr, err)
	}
	c, err := k.refresh(ctx, r)
	if err != nil {
		return err
	}
	var behind []string
	for _, name := range zooKeeperColumns(list) {
		if _, ok := c.local[name]; !ok {
			behind = append(behind, name)
		}
	}
	if len(behind) > 0 {
		return fmt.Errorf("%w: %s lacks %s", errReplicaBehind, r.addr, strings.Join(behind, ", "))
	}
	return nil
}

// zooKeeperColumns are the column names of a replicated table's columns
// node ("columns format version: 1", "N columns:", then "`name` Type" a
// line).
func zooKeeperColumns(list string) []string {
	var out []string
	for _, line := range strings.Split(list, "\n") {
		rest, ok := strings.CutPrefix(line, "`")
		if !ok {
			continue
		}
		if name, _, ok := strings.Cut(rest, "`"); ok {
			out = append(out, name)
		}
	}
	return out
}

// alterSettings are the settings of a column ALTER on server: its query
// logged (servers that log no queries by default still show it in
// system.query_log), and bounded waits for the shard's other replicas.
func alterSettings(server schema.Server, timeout time.Duration) clickhouse.Settings {
	set := clickhouse.Settings{"log_queries": 1}
	if server.ReplicationAlterColumnsTimeout() {
		// Waits for every replica the ZooKeeper session of which is alive
		// (one SIGKILLed a moment ago included); 0 would wait forever.
		set["replication_alter_columns_timeout"] = replicaWait(timeout)
	} else {
		// This replica's own execution only (a profile may say 2: all).
		set[server.AlterSyncName()] = 1
	}
	return set
}

// errorCode labels a DDL failure: the ClickHouse exception code, else
// "timeout" or "network".
func errorCode(err error) string {
	var ex *clickhouse.Exception
	switch {
	case errors.As(err, &ex):
		return strconv.Itoa(int(ex.Code))
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "network"
}

// await polls replica r until events_local shows every column of defs.
func (k *columnKeeper) await(ctx context.Context, r *replica, defs []schema.ColumnDef) error {
	wctx, cancel := k.ddlContext(ctx)
	defer cancel()
	for {
		c, err := k.read(wctx, r)
		if err == nil && !missingAny(c.local, defs) {
			return nil
		}
		if !retry.Sleep(wctx, columnPoll) {
			if err == nil {
				err = wctx.Err()
			}
			return fmt.Errorf("wait for columns %s on %s: %w", strings.Join(defNames(defs), ", "), r.addr, err)
		}
	}
}

// awaitReplicas waits, within the DDL timeout, until every other replica
// of s that answers shows the columns of defs, before the first batch that
// fills them is inserted. ClickHouse 18.16 applies a Replicated table's
// ALTER on each replica apart from its replication queue: a replica still
// catching up could fetch a part holding the new column before its own
// ALTER, then rewrite the part to the columns it had, and read NULL there
// ever after (the cluster chaos test saw it after a replica restart). A
// replica that does not answer is passed over: one that was down applies
// the columns from ZooKeeper when it starts, before it fetches anything.
// Past the timeout the insert goes on, logged: the values stay in
// properties either way.
func (k *columnKeeper) awaitReplicas(ctx context.Context, s *server, r *replica, defs []schema.ColumnDef) {
	if !s.replicated {
		return
	}
	wctx, cancel := k.ddlContext(ctx)
	defer cancel()
	for _, other := range s.replicas {
		if other == r {
			continue
		}
		for {
			c, err := k.read(wctx, other)
			if err != nil && wctx.Err() == nil {
				break // down or unreachable
			}
			if err == nil && !missingAny(c.local, defs) {
				break
			}
			if !retry.Sleep(wctx, columnPoll) {
				if ctx.Err() == nil {
					k.log.Warn("a replica has not shown new columns; inserting anyway (its rows may read NULL there, properties keep the values)",
						zap.String("replica", other.addr), zap.Strings("columns", defNames(defs)))
				}
				return
			}
		}
	}
}

func missingAny(table map[string]string, defs []schema.ColumnDef) bool {
	for _, d := range defs {
		if _, ok := table[d.Name]; !ok {
			return true
		}
	}
	return false
}

func defNames(defs []schema.ColumnDef) []string {
	out := make([]string, len(defs))
	for i, d := range defs {
		out[i] = d.Name
	}
	return out
}

// want records columns that servers' local tables and replicas'
// Distributed tables should get, and starts the background worker that
// adds them.
func (k *columnKeeper) want(local map[*server][]schema.ColumnDef, dist map[*replica][]schema.ColumnDef) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for s, defs := range local {
		add(k.wantLocal, s, defs)
	}
	for r, defs := range dist {
		add(k.wantDist, r, defs)
	}
	if k.spreading || k.ctx.Err() != nil {
		return
	}
	k.spreading = true
	k.wg.Go(k.spread)
}

func add[K comparable](m map[K]map[string]schema.ColumnDef, key K, defs []schema.ColumnDef) {
	if m[key] == nil {
		m[key] = make(map[string]schema.ColumnDef)
	}
	for _, d := range defs {
		m[key][d.Name] = d
	}
}

// spread adds the wanted columns until none is left or close, retrying
// failures with a growing pause.
func (k *columnKeeper) spread() {
	wait := spreadRetryInitial
	for {
		if k.pass() {
			return
		}
		select {
		case <-k.ctx.Done():
			k.mu.Lock()
			k.spreading = false
			k.mu.Unlock()
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, spreadRetryMax)
	}
}

// pass adds the wanted columns once: first to the local tables, then to
// the Distributed tables the columns of which every local table has. It
// says whether nothing is left, and then the worker ends.
func (k *columnKeeper) pass() (idle bool) {
	k.mu.Lock()
	local := cloneWants(k.wantLocal)
	k.mu.Unlock()
	for s, defs := range local {
		if err := k.addLocalAnywhere(s, defs); err != nil {
			if k.ctx.Err() == nil {
				k.log.Warn("add columns to another shard's local table; retrying later", zap.String("clickhouse", s.addr), zap.Error(err))
			}
			continue
		}
		k.mu.Lock()
		forget(k.wantLocal, s, defs)
		k.mu.Unlock()
	}

	k.mu.Lock()
	blocked := make(map[string]bool)
	for _, defs := range k.wantLocal {
		for name := range defs {
			blocked[name] = true
		}
	}
	dist := cloneWants(k.wantDist)
	k.mu.Unlock()
	for r, defs := range dist {
		defs = slices.DeleteFunc(defs, func(d schema.ColumnDef) bool { return blocked[d.Name] })
		if len(defs) == 0 {
			continue
		}
		ctx, cancel := k.ddlContext(context.Background())
		err := k.addDist(ctx, r, defs)
		cancel()
		if err != nil {
			if k.ctx.Err() == nil {
				k.log.Warn("add columns to the Distributed table; retrying later", zap.String("replica", r.addr), zap.Error(err))
			}
			continue
		}
		k.mu.Lock()
		forget(k.wantDist, r, defs)
		k.mu.Unlock()
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	idle = len(k.wantLocal) == 0 && len(k.wantDist) == 0
	if idle {
		k.spreading = false
	}
	return idle
}

// addLocalAnywhere adds defs to server s's local table through the first
// replica that takes them (a Replicated table carries them to the rest).
func (k *columnKeeper) addLocalAnywhere(s *server, defs []schema.ColumnDef) error {
	var errs []error
	for _, r := range s.replicas {
		ctx, cancel := k.ddlContext(context.Background())
		s.ddl.Lock()
		err := k.add(ctx, r, "events_local", defs)
		s.ddl.Unlock()
		if err == nil {
			err = k.await(ctx, r, defs)
		}
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// forget drops the wanted defs of key, unless wanted again meanwhile with
// another definition; k.mu is held.
func forget[K comparable](m map[K]map[string]schema.ColumnDef, key K, defs []schema.ColumnDef) {
	for _, d := range defs {
		if m[key][d.Name] == d {
			delete(m[key], d.Name)
		}
	}
	if len(m[key]) == 0 {
		delete(m, key)
	}
}

// cloneWants copies wants, each key's columns in name order.
func cloneWants[K comparable](m map[K]map[string]schema.ColumnDef) map[K][]schema.ColumnDef {
	out := make(map[K][]schema.ColumnDef, len(m))
	for key, defs := range m {
		names := slices.Sorted(maps.Keys(defs))
		for _, n := range names {
			out[key] = append(out[key], defs[n])
		}
	}
	return out
}
