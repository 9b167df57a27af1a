package sink

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/failpoint"
	"github.com/surge-events/surge/pkg/retry"
)

// server is one ClickHouse shard: its replicas and a connection pool to
// each. Shard loops share it; the driver's pools are safe for concurrent use.
//
// Each shard loop (sink shard) writes to one replica at a time, its
// current one, the first at start; an attempt that fails for a transient
// reason moves the loop's next attempt to another replica (failover). The
// loop re-reads the watermark after a failed insert, so the watermark comes
// from the replica it writes to next.
//
// With replication the watermark a replica answers may lag: parts inserted
// through another replica may not have reached it yet. Those rows are safe
// (an insert that returned is in ZooKeeper's replication log, and every
// replica fetches it), so the server remembers, per sink shard, the highest
// sequence it saw committed (floor: a returned insert or a watermark read)
// and never answers a lower watermark. So a retry after a failover cuts the
// batch where the failed attempt did, and sends the identical block: the
// same rows in the same order. If the failed attempt did land, block
// deduplication (insert_deduplicate, on by default and set explicitly)
// stores the identical block once, whichever replica takes it.
type server struct {
	// addr is the configured Addrs entry: the replicas joined by "|".
	addr       string
	database   string
	cluster    string
	replicated bool
	replicas   []*replica
	// timeout bounds the schema work on one replica (EnsureSchema).
	timeout time.Duration
	// turns holds a token for each insert or presence read under way on
	// the server, at most ClickHouseConfig.MaxInserts; turnWait, when set,
	// observes how long each waited for its token.
	turns    chan struct{}
	turnWait prometheus.Observer

	// keeper makes sure the columns a batch names exist; shared by every
	// server of the sink (see columnKeeper).
	keeper *columnKeeper
	// ddl serialises this process's column DDL on the shard's local
	// tables: whoever holds it reads the columns again before altering, so
	// a burst of batches naming a new column adds it once.
	ddl sync.Mutex

	mu sync.Mutex
	// current is the index of the replica each sink shard writes to.
	current map[int]int
	// floor is, per sink shard, the highest sequence known committed;
	// only kept with replication.
	floor map[int]uint64
}

// replica is one clickhouse-server of a shard.
type replica struct {
	addr string
	conn driver.Conn
	// schemaOK is cleared when a query says the table or database is gone,
	// so the next attempt creates them again.
	schemaOK atomic.Bool
	// failedAt is when an attempt on the replica last failed (unix nanos),
	// so a failover prefers a replica that has not just failed.
	failedAt atomic.Int64
	// silentAt is when the replica last hung on a presence read (unix
	// nanos): the next reads within failoverCooldown do not wait for it
	// again.
	silentAt atomic.Int64
	// cols are the columns of the replica's events_local and events as
	// last read; nil until read, and again when a query says a column is
	// missing.
	cols atomic.Pointer[tableColumns]
}

var _ store = (*server)(nil)

// store is what a shard loop needs of its ClickHouse shard.
type store interface {
	// Present is the set of b's EVENTS sequences the server holds, read
	// at a cost bounded by b, whatever the table holds.
	Present(ctx context.Context, shard int, b *batch.Batch) (map[uint64]struct{}, error)
	// Floor is the highest EVENTS sequence of shard known inserted on the
	// server by this process (replicated servers; 0 otherwise).
	Floor(shard int) uint64
	// Insert writes b as one block.
	Insert(ctx context.Context, b *batch.Batch) error
	// Addr names the server, for spans and logs.
	Addr() string
}

// failoverCooldown is how long a replica that failed is passed over by a
// failover when another replica has not failed as recently.
const failoverCooldown = 10 * time.Second

// openServer opens a connection pool to each replica of the Addrs entry
// addr. It does no I/O: the driver dials on first use. Until shareKeeper
// joins it to the sink's other servers, its column DDL only knows itself.
func openServer(c ClickHouseConfig, addr string) (*server, error) {
	s := &server{
		addr: addr, database: c.Database, cluster: c.Cluster, replicated: c.Replicated,
		timeout: c.InsertTimeout, current: make(map[int]int), floor: make(map[int]uint64),
		turns: make(chan struct{}, c.inserts()),
	}
	s.keeper = newColumnKeeper(c, []*server{s}, nil, nil, nil)
	for _, a := range Replicas(addr) {
		conn, err := openConn(c, a)
		if err != nil {
			_ = s.Close()
			return nil, err
		}
		s.replicas = append(s.replicas, &replica{addr: a, conn: conn})
	}
	return s, nil
}

// otherConns is the connections a replica's pool keeps beside its inserts'
// and presence reads' (ClickHouseConfig.MaxInserts): schema and eraser.
const otherConns = 4

func openConn(c ClickHouseConfig, addr string) (driver.Conn, error) {
	var settings clickhouse.Settings
	if c.Replicated {
		// The default, but a profile may turn it off: a retried block
		// must land once.
		settings = clickhouse.Settings{"insert_deduplicate": 1}
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     []string{addr},
		Auth: clickhouse.Auth{
			Database: "default", // the sink's database may not exist yet
			Username: c.Username,
			Password: c.Password,
		},
		Settings:    settings,
		DialTimeout: c.DialTimeout,
		// The driver fails a query that waits DialTimeout for one of
		// MaxOpenConns: inserts and presence reads take turns below it
		// (server.turn), and the other queries (schema, eraser) have room
		// beside.
		MaxOpenConns: c.inserts() + otherConns,
		MaxIdleConns: c.inserts() + otherConns,
		ClientInfo: clickhouse.ClientInfo{
			Products: []struct{ Name, Version string }{{Name: "surge-sink", Version: "1"}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", addr, err)
	}
	return conn, nil
}

// Addr is the shard's configured address: its replicas joined by "|".
func (s *server) Addr() string { return s.addr }

// use is the replica sink shard k writes to, and its index.
func (s *server) use(k int) (int, *replica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.current[k]
	return i, s.replicas[i]
}

// done records the outcome of an attempt of sink shard k on replica i: a
// transient failure moves k to another replica, and the error says which.
// An attempt the caller cancelled (shutdown, a lost shard lease) says
// nothing about the replica; a timeout does.
func (s *server) done(k, i int, err error) error {
	if err == nil || Classify(err) == Permanent || errors.Is(err, context.Canceled) || refusedAtCommit(err) {
		return err
	}
	r := s.replicas[i]
	r.failedAt.Store(time.Now().UnixNano())
	if len(s.replicas) == 1 {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current[k] != i {
		return err
	}
	next := s.next(i)
	s.current[k] = next
	return fmt.Errorf("%w; next attempt on replica %s", err, s.replicas[next].addr)
}

// next picks the replica after i that failed longest ago (or never),
// in order after i; s.mu is held.
func (s *server) next(i int) int {
	now := time.Now().UnixNano()
	best := (i + 1) % len(s.replicas)
	for step := 1; step < len(s.replicas); step++ {
		j := (i + step) % len(s.replicas)
		if now-s.replicas[j].failedAt.Load() > int64(failoverCooldown) {
			return j
		}
		if s.replicas[j].failedAt.Load() < s.replicas[best].failedAt.Load() {
			best = j
		}
	}
	return best
}

// raise records seq as committed for sink shard k and returns the floor.
func (s *server) raise(k int, seq uint64) uint64 {
	if !s.replicated {
		return seq
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq > s.floor[k] {
		s.floor[k] = seq
	}
	return s.floor[k]
}

// EnsureSchema makes sure the shard holds the database and both tables at
// the current version. The first replica that holds them is brought to
// the version; only when every replica that answers lacks them are they
// created, through the first of those (with replication `ON CLUSTER`,
// reaching every server). A replica that lacks them while another holds
// them (a new one, or one that cannot attach its table after a crash)
// does not hold the start up: it is seen to before its first use. Each
// replica has a timeout of its own (the server's), so one that hangs
// leaves the next its whole turn.
func (s *server) EnsureSchema(ctx context.Context) error {
	var errs []error
	var lacking []*replica
	for _, r := range s.replicas {
		ok, err := s.holdsSchema(ctx, r)
		if err == nil && !ok {
			lacking = append(lacking, r)
			continue
		}
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if Classify(err) == Permanent || ctx.Err() != nil {
			return errors.Join(errs...)
		}
	}
	for _, r := range lacking {
		err := s.within(ctx, func(ctx context.Context) error { return s.ensureSchema(ctx, r) })
		if err == nil {
			return nil
		}
		errs = append(errs, err)
		if Classify(err) == Permanent || ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
}

// holdsSchema tells whether replica r holds both tables and, when it
// does, brings them to the current version; within the server's timeout.
func (s *server) holdsSchema(ctx context.Context, r *replica) (ok bool, err error) {
	err = s.within(ctx, func(ctx context.Context) error {
		if ok, err = s.hasSchema(ctx, r); err != nil || !ok {
			return err
		}
		return s.migrated(ctx, r)
	})
	return ok, err
}

// within runs f with the server's timeout for one replica.
func (s *server) within(ctx context.Context, f func(context.Context) error) error {
	if s.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	return f(ctx)
}

// ensureSchema makes sure replica r holds the schema. Without replication
// it runs the statements on r. With replication it queues them `ON
// CLUSTER`, when r lacks a table, and waits until r's DDL
// worker has run them.
func (s *server) ensureSchema(ctx context.Context, r *replica) error {
	if r.schemaOK.Load() {
		return nil
	}
	if !s.replicated {
		for _, stmt := range SchemaStatements(s.database, s.cluster) {
			if err := r.conn.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("create schema on %s: %w", r.addr, err)
			}
		}
		return s.migrated(ctx, r)
	}
	ok, err := s.hasSchema(ctx, r)
	if err != nil {
		return err
	}
	if ok {
		return s.migrated(ctx, r)
	}
	// distributed_ddl_task_timeout 0 queues the statement and returns:
	// waiting for every server would wait out one that is down.
	qctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"distributed_ddl_task_timeout": 0}))
	for _, stmt := range ReplicatedSchemaStatements(s.database, s.cluster) {
		if err := r.conn.Exec(qctx, stmt); err != nil {
			return fmt.Errorf("create schema on cluster %s through %s: %w", s.cluster, r.addr, err)
		}
	}
	for {
		ok, err := s.hasSchema(ctx, r)
		if err != nil {
			return err
		}
		if ok {
			return s.migrated(ctx, r)
		}
		if !retry.Sleep(ctx, schemaPoll) {
			return fmt.Errorf("create schema on %s: the server has not run the statements queued on cluster %s (is ZooKeeper up? see its error log): %w",
				r.addr, s.cluster, ctx.Err())
		}
	}
}

// migrated brings replica r's tables, which exist, to the current table
// version (see columnKeeper.migrate) and records that r holds the schema.
func (s *server) migrated(ctx context.Context, r *replica) error {
	if err := s.keeper.migrate(ctx, s, r); err != nil {
		return err
	}
	r.schemaOK.Store(true)
	return nil
}

// schemaPoll is how often a replica is checked for the tables queued `ON
// CLUSTER`; its DDL worker runs them within about 100 ms.
const schemaPoll = 50 * time.Millisecond

// hasSchema tells whether replica r holds both tables.
func (s *server) hasSchema(ctx context.Context, r *replica) (bool, error) {
	n, err := queryUint(ctx, r, SchemaTablesQuery, s.database)
	if err != nil {
		return false, fmt.Errorf("look up schema on %s: %w", r.addr, err)
	}
	return n == 2, nil
}

// Present is the set of b's EVENTS sequences the shard's ClickHouse holds.
// An EVENTS message always lands whole in one block, so a row
// of it tells: the sorting keys of b's rows are looked up (PresenceQuery),
// presenceChunk rows a query, which bounds the read by the batch, not the
// table.
//
// Every row is asked, not one per message: the batcher's dedup may cut a
// message differently after a restart (an event it dropped as a copy one
// time, its state lost, it keeps the next), so the landed version of a
// message may lack the row this batch has first, and asking for that row
// alone would take the message for missing and insert its other rows
// twice. One row the two versions share is enough, and they share one
// whenever one knew at least every copy the other knew.
//
// On a replicated shard every other replica that answers is asked too,
// and what any of them holds is present. A batch whose insert outcome is
// unknown was often tried on another replica first (a failover after a
// failed attempt), and a part one replica took reaches the others only
// when they fetch it, which may wait behind a column's ALTER: read on a
// lagging replica alone, such a batch looked absent to the shard's next
// owner, which inserted it again there, and replicated deduplication
// catches that only for a byte-identical block (an ALTER in between
// changes the part, and the block's id with it).
//
// A replica that does not answer (down, or hung past a quarter of the
// insert timeout; one that hung within failoverCooldown is not asked
// again) may hold such a part alone, so the answers count only when
// one of the replicas that gave them holds every part committed to the
// shard so far (fetchedAll). Otherwise Present fails with
// presenceUnknown, a transient error: the shard waits, its watchdog
// and log saying on what, until the silent replica answers again or its
// parts are fetched, for at most presenceWaitMax (see remaining).
func (s *server) Present(ctx context.Context, shard int, b *batch.Batch) (map[uint64]struct{}, error) {
	// Every shard reads at the start of its tenure: the reads take turns
	// with the inserts, or a server with many shards would have them wait
	// out the driver's pool at once.
	release, err := s.turn(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	i, r := s.use(shard)
	present, err := s.present(ctx, r, shard, b)
	if err != nil {
		return nil, s.done(shard, i, err)
	}
	if !s.replicated {
		return present, nil
	}
	answered := []*replica{r}
	var silent []string
	now := time.Now().UnixNano()
	for j, o := range s.replicas {
		if j == i {
			continue
		}
		if now-o.silentAt.Load() <= int64(failoverCooldown) {
			silent = append(silent, o.addr)
			continue
		}
		octx, cancel := context.WithTimeout(ctx, s.timeout/4)
		more, err := s.present(octx, o, shard, b)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			o.failedAt.Store(time.Now().UnixNano())
			if errors.Is(octx.Err(), context.DeadlineExceeded) {
				// Hung, not down: a refused connection costs nothing to
				// try again, and answers as soon as the replica is back.
				o.silentAt.Store(time.Now().UnixNano())
			}
			silent = append(silent, o.addr)
			continue
		}
		answered = append(answered, o)
		maps.Copy(present, more)
	}
	if len(silent) == 0 {
		return present, nil
	}
	var behind []string
	for _, a := range answered {
		lag, err := s.fetchedAll(ctx, a)
		if err == nil && lag == "" {
			return present, nil
		}
		if err != nil {
			lag = err.Error()
		}
		behind = append(behind, a.addr+" "+lag)
	}
	return nil, &presenceUnknown{
		answered: present,
		why: fmt.Sprintf("shard %d: replica %s does not answer, and none that does holds every part committed so far (%s)",
			shard, strings.Join(silent, ", "), strings.Join(behind, "; ")),
	}
}

// Inserts refused at their commit (refusedAtCommit) are sent again at
// once this many times in all, commitRaceWait apart (shardLoop.land).
const (
	commitRaceAttempts = 3
	commitRaceWait     = 100 * time.Millisecond
)

// refusedAtCommit tells whether an insert failed at its commit in
// ZooKeeper with a definite answer, so that nothing of it landed: on
// ClickHouse 18.16, "Unexpected logical error while adding block"
// (UNEXPECTED_ZOOKEEPER_ERROR), mostly a "Bad version" of the table's
// columns node when a column's ALTER committed while the block was being
// written. The server rolled the part back. A commit whose answer was
// lost fails with UNKNOWN_STATUS_OF_INSERT (319) instead, and its outcome
// stays unknown.
func refusedAtCommit(err error) bool {
	var ex *clickhouse.Exception
	return errors.As(err, &ex) && ex.Code == 244 && strings.Contains(ex.Message, "while adding block")
}

// presenceUnknown says a presence read cannot tell what landed: a replica
// that may hold the only copy of a part does not answer. It carries what
// the replicas that answered hold, for a caller that stops waiting (see
// presenceWaitMax).
type presenceUnknown struct {
	answered map[uint64]struct{}
	why      string
}

func (e *presenceUnknown) Error() string {
	return "presence unknown while a replica is silent: " + e.why
}

// fetchedAll tells whether replica r holds every part committed to its
// table until now, on any replica: it has copied the whole replication
// log into its queue, and, read after that, its queue has no part left to
// fetch. It returns "" if so, else what r still lags by. Two reads in
// that order: one read could see an empty queue just before the log's
// last entries were copied into it.
func (s *server) fetchedAll(ctx context.Context, r *replica) (string, error) {
	const where = " FROM system.replicas WHERE database = ? AND table = 'events_local'"
	type position struct{ pointer, maxIndex, readonly uint64 }
	pos, err := answer(ctx, func() (position, error) {
		var p position
		err := r.conn.QueryRow(ctx, "SELECT toUInt64(log_pointer), toUInt64(log_max_index), toUInt64(is_readonly)"+where, s.database).
			Scan(&p.pointer, &p.maxIndex, &p.readonly)
		return p, err
	})
	if err != nil {
		return "", fmt.Errorf("read replication log position on %s: %w", r.addr, err)
	}
	if pos.readonly != 0 {
		return "read-only (no ZooKeeper session)", nil
	}
	if pos.pointer <= pos.maxIndex {
		return fmt.Sprintf("%d replication log entries to copy", pos.maxIndex-pos.pointer+1), nil
	}
	fetches, err := queryUint(ctx, r, "SELECT toUInt64(inserts_in_queue)"+where, s.database)
	if err != nil {
		return "", fmt.Errorf("read replication queue on %s: %w", r.addr, err)
	}
	if fetches > 0 {
		return fmt.Sprintf("%d parts to fetch", fetches), nil
	}
	return "", nil
}

// presenceChunk is the most rows one presence query asks about: a batch
// of the default 10,000 rows is one query, and a read is under
// presenceChunk granules a part.
const presenceChunk = 10_000

func (s *server) present(ctx context.Context, r *replica, shard int, b *batch.Batch) (map[uint64]struct{}, error) {
	if err := s.ensureSchema(ctx, r); err != nil {
		return nil, err
	}
	present := make(map[uint64]struct{})
	for from := 0; from < b.Len(); from += presenceChunk {
		to := min(from+presenceChunk, b.Len())
		keys, n, err := presenceTable(b, from, to)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			continue
		}
		// log_queries: the read is in system.query_log, with its read_rows,
		// even on servers that log no queries by default.
		qctx := clickhouse.Context(ctx, clickhouse.WithExternalTable(keys), clickhouse.WithSettings(clickhouse.Settings{"log_queries": 1}))
		first, last := b.Seq[from], b.Seq[to-1]
		if to == b.Len() {
			last = b.LastSeq
		}
		seqs, err := answer(ctx, func() ([]uint64, error) {
			rows, err := r.conn.Query(qctx, PresenceQuery(s.database), shard, first, last)
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			var seqs []uint64
			for rows.Next() {
				var seq uint64
				if err := rows.Scan(&seq); err != nil {
					return nil, err
				}
				seqs = append(seqs, seq)
			}
			return seqs, rows.Err()
		})
		if err != nil {
			r.noteSchemaLoss(err)
			return nil, fmt.Errorf("read sequences of shard %d on %s: %w", shard, r.addr, err)
		}
		for _, seq := range seqs {
			present[seq] = struct{}{}
		}
	}
	return present, nil
}

// Floor is the highest EVENTS sequence of shard this process saw inserted
// on a replicated server: a replica that has not fetched those parts yet
// must not make them look missing. 0 without replication.
func (s *server) Floor(shard int) uint64 { return s.raise(shard, 0) }

// Insert writes b into events_local of the replica b's shard writes to, as
// one block, column by column. ctx carries the query id
// (clickhouse.WithQueryID) and the deadline.
func (s *server) Insert(ctx context.Context, b *batch.Batch) error {
	release, err := s.turn(ctx)
	if err != nil {
		return err
	}
	defer release()
	shard, lastSeq := b.Shard, b.LastSeq
	i, r := s.use(shard)
	// b is not used past insert, so the rows it holds can go while the
	// driver sends its own copy of them.
	if err := s.insert(ctx, r, b); err != nil {
		return s.done(shard, i, err)
	}
	s.raise(shard, lastSeq)
	return nil
}

// errNoTurn is an insert or a presence read that ended while it waited
// for its turn (ClickHouseConfig.MaxInserts): it sent nothing.
var errNoTurn = errors.New("no turn on the server")

// turn waits for a turn to insert on the server, or to read which rows it
// holds (Present). The wait ends with ctx (the query's timeout, the
// shard's stop or a lost lease) and is bounded by the queries ahead of
// it, each by its own timeout.
func (s *server) turn(ctx context.Context) (release func(), err error) {
	start := time.Now()
	select {
	case s.turns <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w on %s: %w", errNoTurn, s.addr, ctx.Err())
	}
	if s.turnWait != nil {
		s.turnWait.Observe(time.Since(start).Seconds())
	}
	return func() { <-s.turns }, nil
}

func (s *server) insert(ctx context.Context, r *replica, b *batch.Batch) (err error) {
	if err := s.ensureSchema(ctx, r); err != nil {
		return err
	}
	defer func() { r.noteSchemaLoss(err) }()
	bt, added, err := s.fill(ctx, r, b)
	if err != nil {
		return err
	}
	// A batch that was not sent still holds its connection mid-query.
	defer func() {
		if !bt.IsSent() {
			_ = bt.Abort()
		}
	}()
	// The driver holds its own copy of the rows now: b, unused from here
	// on, can go while the block travels.
	if err := bt.Send(); err != nil {
		return fmt.Errorf("send to %s: %w", r.addr, err)
	}
	if added {
		failpoint.Stop(failpoint.SinkInsertedNewColumn)
	}
	return nil
}

// fill starts the insert of b on replica r and appends b's rows to it: the
// base columns, and the typed columns after making sure the table has
// them (added says this insert added one). A failed fill aborts the insert.
func (s *server) fill(ctx context.Context, r *replica, b *batch.Batch) (_ driver.Batch, added bool, err error) {
	var typed []typedInsert
	var cols *tableColumns
	if len(b.Typed) > 0 {
		if cols, added, err = s.keeper.ensure(ctx, s, r, b.Typed); err != nil {
			return nil, false, err
		}
		var conflicts []string
		typed, conflicts = convertTyped(b, cols.local, s.keeper.path)
		view := *b
		view.Conflicts = conflicts
		b = &view
	}
	names := make([]string, len(typed))
	for i, c := range typed {
		names[i] = c.name
	}
	bt, err := r.conn.PrepareBatch(ctx, InsertQuery(s.database, names...))
	if err != nil {
		return nil, false, fmt.Errorf("prepare insert on %s: %w", r.addr, err)
	}
	if err := AppendBatch(bt, b); err != nil {
		_ = bt.Abort()
		return nil, false, err
	}
	for i, c := range typed {
		if err := appendValues(bt.Column(len(Columns)+i), c.values); err != nil {
			_ = bt.Abort()
			return nil, false, s.keeper.typeChanged(ctx, r, cols, c.name, err)
		}
	}
	return bt, added, nil
}

// AppendBatch appends the base columns of b's rows to bt column by
// column, in the order of Columns (the order of InsertQuery), each with
// its batch.BaseColumns Values, as the sink inserts a batch; the typed
// columns named after them are the caller's.
func AppendBatch(bt driver.Batch, b *batch.Batch) error {
	for i, c := range batch.BaseColumns {
		if err := appendValues(bt.Column(i), c.Values(b)); err != nil {
			return fmt.Errorf("append column %s: %w", c.Name, err)
		}
	}
	return nil
}

// appendValues appends a column's values. Arrays go row by row: the
// driver appends a typed row ([]string, []*int64...) without reflection,
// a whole [][]T with reflection on every row.
func appendValues(col driver.BatchColumn, values any) error {
	switch v := values.(type) {
	case [][]string:
		return appendRows(col, v)
	case [][]*string:
		return appendRows(col, v)
	case [][]*int64:
		return appendRows(col, v)
	case [][]*float64:
		return appendRows(col, v)
	case [][]*uint8:
		return appendRows(col, v)
	case [][]*bool:
		return appendRows(col, v)
	}
	return col.Append(values)
}

func appendRows[T any](col driver.BatchColumn, rows [][]T) error {
	// Most rows are empty (no unpromoted paths): one boxed empty slice
	// for all of them spares an allocation a row.
	var empty any = []T{}
	for _, row := range rows {
		var err error
		if len(row) == 0 {
			err = col.AppendRow(empty)
		} else {
			err = col.AppendRow(row)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// noteSchemaLoss clears schemaOK when err says the database or a table is
// missing (someone dropped them, the server lost its data, or a replica has
// not run the statements queued on cluster yet), and forgets the columns
// read when it says a column is (a replica that has not applied an ALTER
// yet, a column dropped by hand): the next attempt reads them again and
// adds what is missing.
func (r *replica) noteSchemaLoss(err error) {
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		return
	}
	switch ex.Code {
	case 60, 81: // UNKNOWN_TABLE, UNKNOWN_DATABASE
		r.schemaOK.Store(false)
	case 16, 47: // NO_SUCH_COLUMN_IN_TABLE, UNKNOWN_IDENTIFIER
		r.schemaOK.Store(false)
		r.cols.Store(nil)
	}
}

// Close stops the column DDL under way in the background (shared with the
// sink's other servers) and closes every replica's connection pool.
func (s *server) Close() error {
	s.keeper.close()
	var errs []error
	for _, r := range s.replicas {
		errs = append(errs, r.conn.Close())
	}
	return errors.Join(errs...)
}
