package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/streams"
)

// ErasureConfig is the eraser's section: the runner of erasure requests
// (package erasure) that one sink instance runs under the lease "eraser".
type ErasureConfig struct {
	// Enabled runs the eraser in this sink (SURGE_ERASURE_ENABLED); every
	// sink may, the lease lets one run at a time.
	Enabled bool `yaml:"enabled" env:"ENABLED"`
	// Settle is how long after a request's suppression its landing marks
	// are read (SURGE_ERASURE_SETTLE): longer than a suppression takes to
	// reach every batcher (milliseconds) plus a batch's max age and its
	// publish, so every batch that may hold an event the batcher did not
	// yet drop is in BATCHES at the marks.
	Settle time.Duration `yaml:"settle" env:"SETTLE"`
	// Every is the pause between two rounds of the runner while requests
	// are pending (SURGE_ERASURE_EVERY); an idle runner looks every 4x.
	Every time.Duration `yaml:"every" env:"EVERY"`
}

// DefaultErasureConfig runs the eraser with a 5 s settle delay.
func DefaultErasureConfig() ErasureConfig {
	return ErasureConfig{Enabled: true, Settle: 5 * time.Second, Every: 500 * time.Millisecond}
}

func (c ErasureConfig) validate() error {
	var errs []error
	if c.Settle < 0 {
		errs = append(errs, fmt.Errorf("settle must not be negative, got %s", c.Settle))
	}
	if c.Every <= 0 {
		errs = append(errs, fmt.Errorf("every must be positive, got %s", c.Every))
	}
	return errors.Join(errs...)
}

// eraserService is the lease name of the eraser: one "shard", so one
// runner at a time across every sink.
const eraserService = "eraser"

// runEraser runs the erasure requests while this instance holds the
// eraser lease, until ctx ends. The lease lives in SURGE_LEASES with the
// sink's lease_ttl (the bucket's TTL is every lease's): a dead runner's
// requests are resumed by another sink about that long later. Every Step
// is idempotent and reads the state from the bucket, so the runner that
// takes the lease after a crash resumes each request where it was.
func (s *Service) runEraser(ctx context.Context, js jetstream.JetStream, servers []*server) {
	c := s.cfg.Erasure
	if !c.Enabled {
		return
	}
	owner, err := lease.NewOwner(js, lease.Config{
		Service: eraserService, Instance: s.instance, Shards: 1, TTL: s.cfg.LeaseTTL, Replicas: s.cfg.Streams.Replicas,
	}, s.log)
	if err != nil {
		s.log.Error("eraser: not started", zap.Error(err))
		return
	}
	err = owner.Run(ctx, func(ctx context.Context, _ int) error {
		return s.erase(ctx, js, servers, func() bool { return owner.Holds(0) })
	})
	if err != nil && ctx.Err() == nil {
		s.log.Error("eraser stopped", zap.Error(err))
	}
}

// erase steps the runner while the lease holds.
func (s *Service) erase(ctx context.Context, js jetstream.JetStream, servers []*server, holds func() bool) error {
	var store *erasure.Store
	err := retry.Do(ctx, s.cfg.Retry, func() error {
		var err error
		store, err = erasure.Open(ctx, js, s.cfg.Streams.Replicas)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		s.log.Warn("eraser: open bucket, retrying", zap.Int("attempt", attempt), zap.Error(err))
	})
	if err != nil {
		return nil // ctx ended
	}
	a := &eraser{s: s, js: js, store: store, servers: servers}
	r := &erasure.Runner{Store: fencedStore{store, holds}, Actions: a, Settle: s.cfg.Erasure.Settle, Log: s.log.Named("eraser")}
	s.log.Info("eraser running")
	backoff := s.cfg.Retry.NewBackOff()
	for {
		pending, err := r.Step(ctx)
		wait := s.cfg.Erasure.Every
		switch {
		case err != nil && ctx.Err() == nil:
			wait = max(wait, backoff.NextBackOff())
			s.log.Warn("eraser: step failed, retrying", zap.Duration("wait", wait), zap.Error(err))
		case err == nil:
			backoff.Reset()
			if !pending {
				wait *= 4
			}
		}
		if !retry.Sleep(ctx, wait) {
			return nil
		}
	}
}

// errNotEraser stops a step of a runner that lost the lease.
var errNotEraser = errors.New("eraser lease lost")

// fencedStore refuses to save once the lease is lost: a paused runner
// does not move a request the next one works on (the revision check of
// Save catches the rest).
type fencedStore struct {
	*erasure.Store
	holds func() bool
}

func (f fencedStore) Save(ctx context.Context, r *erasure.Request) error {
	if !f.holds() {
		return errNotEraser
	}
	return f.Store.Save(ctx, r)
}

// eraser carries out the runner's steps on NATS and ClickHouse.
type eraser struct {
	s       *Service
	js      jetstream.JetStream
	store   *erasure.Store
	servers []*server
}

var _ erasure.Actions = (*eraser)(nil)

func (e *eraser) Suppress(ctx context.Context, r *erasure.Request) error {
	return e.store.Suppress(ctx, r)
}

// Mark reads each shard's last EVENTS and BATCHES sequences.
func (e *eraser) Mark(ctx context.Context) (map[int]erasure.Mark, error) {
	events, err := e.js.Stream(ctx, streams.Events)
	if err != nil {
		return nil, err
	}
	batches, err := e.js.Stream(ctx, streams.Batches)
	if err != nil {
		return nil, err
	}
	marks := map[int]erasure.Mark{}
	for k := range e.s.cfg.Shards {
		var m erasure.Mark
		if m.Events, err = lastSeq(ctx, events, streams.EventsSubject(k)); err != nil {
			return nil, err
		}
		if m.Batches, err = lastSeq(ctx, batches, streams.BatchesSubject(k)); err != nil {
			return nil, err
		}
		marks[k] = m
	}
	return marks, nil
}

func lastSeq(ctx context.Context, st jetstream.Stream, subject string) (uint64, error) {
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last message of %s: %w", subject, err)
	}
	return m.Sequence, nil
}

// Landed reports whether every shard landed past its mark: its watermark
// in ClickHouse reached the mark's EVENTS sequence, or its sink consumer
// acked every batch BATCHES held at the mark. Either says every batch
// that may hold a suppressed user's event (cut before the batcher saw the
// suppression, so at the latest the settle delay before the marks) is in
// ClickHouse or dead-lettered. The second covers a shard whose last
// events were all suppressed, which the watermark never reaches.
func (e *eraser) Landed(ctx context.Context, marks map[int]erasure.Mark) (bool, error) {
	for k, m := range marks {
		if m.Events == 0 && m.Batches == 0 {
			continue
		}
		if m.Events > 0 {
			wm, err := e.watermark(ctx, k)
			if err != nil {
				return false, err
			}
			if wm >= m.Events {
				continue
			}
		}
		if m.Batches == 0 {
			continue // no batch to land: the rest is dropped by the batcher
		}
		c, err := e.js.Consumer(ctx, streams.Batches, ConsumerName(k))
		if err != nil {
			return false, nil // not created yet (lease mode): not landed
		}
		info, err := c.Info(ctx)
		if err != nil {
			return false, err
		}
		if info.AckFloor.Stream < m.Batches {
			return false, nil
		}
	}
	return true, nil
}

// watermark is the highest EVENTS sequence of shard k in ClickHouse, read
// on the first replica that answers (a lagging replica only makes the
// eraser wait longer).
func (e *eraser) watermark(ctx context.Context, k int) (uint64, error) {
	srv := e.servers[e.s.cfg.ServerOf(k)]
	var wm uint64
	q := fmt.Sprintf("SELECT max(seq) FROM %s.events_local WHERE shard = %d", srv.database, k)
	err := onReplica(srv, func(r *replica) (err error) {
		wm, err = queryUint(ctx, r, q)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("watermark of shard %d: %w", k, err)
	}
	return wm, nil
}

// onReplica runs f on the shard's replicas in turn until one succeeds: a
// replica that is down does not hold the eraser up.
func onReplica(srv *server, f func(r *replica) error) error {
	var errs []error
	for _, r := range srv.replicas {
		err := f(r)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", r.addr, err))
	}
	return errors.Join(errs...)
}

// where is the condition matching the rows of reqs.
func where(reqs []*erasure.Request) string {
	var b strings.Builder
	for i, r := range reqs {
		if i > 0 {
			b.WriteString(" OR ")
		}
		b.WriteString("(tenant = ")
		b.WriteString(quote(r.Tenant))
		b.WriteString(" AND user_id IN (")
		for j, u := range r.Users {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(quote(u))
		}
		b.WriteByte(')')
		if !r.Before.IsZero() {
			fmt.Fprintf(&b, " AND ts < toDateTime(%d)", r.Before.Unix())
		}
		b.WriteByte(')')
	}
	return b.String()
}

// quote makes s a ClickHouse string literal.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// bigQuery lets a statement list thousands of user ids (max_query_size is
// 256 KiB by default).
func bigQuery(ctx context.Context) context.Context {
	return clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_query_size": 64 << 20}))
}

// countOn counts the rows matching cond on replica r (FINAL folds the
// rows of equal key first).
func countOn(ctx context.Context, srv *server, r *replica, cond string, final bool) (uint64, error) {
	from := srv.database + ".events_local"
	if final {
		from += " FINAL"
	}
	n, err := queryUint(bigQuery(ctx), r, "SELECT count() FROM "+from+" WHERE "+cond)
	if err != nil {
		return 0, fmt.Errorf("count on %s: %w", r.addr, err)
	}
	return n, nil
}

// Count counts each request's rows on each ClickHouse shard, on the
// first replica that answers.
func (e *eraser) Count(ctx context.Context, reqs []*erasure.Request) (map[string]map[string]uint64, error) {
	out := map[string]map[string]uint64{}
	for i, srv := range e.servers {
		for _, q := range reqs {
			var n uint64
			err := onReplica(srv, func(r *replica) (err error) {
				n, err = countOn(ctx, srv, r, where([]*erasure.Request{q}), false)
				return err
			})
			if err != nil {
				return nil, err
			}
			if out[q.ID] == nil {
				out[q.ID] = map[string]uint64{}
			}
			out[q.ID][strconv.Itoa(i)] = n
		}
	}
	return out, nil
}

// Delete runs the batch's one mutation on each ClickHouse shard and waits
// until it is done on every replica. The mutation carries the batch id
// (an always-true condition naming it), so a runner that resumes finds it
// in system.mutations and does not send it again. It goes to one replica;
// ReplicatedMergeTree replicates it through ZooKeeper (no ON CLUSTER,
// which would need the distributed DDL queue and say nothing more).
//
// Why a mutation and never a changed batch: a batch may be published
// again with the same id, and JetStream then keeps its first version; the
// sink may insert it again after a crash. Rows of a suppressed user that
// such a batch brings land before the landing marks this deletion waits
// for, so the mutation, sent after them, removes them; no batch is ever
// rewritten.
func (e *eraser) Delete(ctx context.Context, batchID string, reqs []*erasure.Request) error {
	marker := "erasure " + batchID
	cond := "(" + where(reqs) + ") AND " + quote(marker) + " != ''"
	for _, srv := range e.servers {
		// Every replica is asked: a mutation sent before a crash is on
		// every replica ZooKeeper reached. It is sent to the first that
		// answered.
		sent := false
		var to *replica
		for _, r := range srv.replicas {
			n, err := mutations(ctx, srv, r, marker, false)
			if err != nil {
				e.s.log.Warn("eraser: replica not answering", zap.String("replica", r.addr), zap.Error(err))
				continue
			}
			if to == nil {
				to = r
			}
			if n > 0 {
				sent = true
				break
			}
		}
		if to == nil && !sent {
			return fmt.Errorf("no replica of %s answers", srv.addr)
		}
		if !sent {
			r := to
			q := fmt.Sprintf("ALTER TABLE %s.events_local DELETE WHERE %s", srv.database, cond)
			if err := r.conn.Exec(bigQuery(ctx), q); err != nil {
				return fmt.Errorf("mutation on %s: %w", r.addr, err)
			}
			e.s.log.Info("eraser: mutation sent", zap.String("batch", batchID), zap.String("shard", srv.addr))
		}
		for _, r := range srv.replicas {
			if err := waitMutation(ctx, srv, r, marker); err != nil {
				return err
			}
		}
	}
	return nil
}

// mutations counts the mutations of events_local on r whose command names
// marker, only the unfinished ones when pending.
func mutations(ctx context.Context, srv *server, r *replica, marker string, pending bool) (uint64, error) {
	q := fmt.Sprintf("SELECT count() FROM system.mutations WHERE database = %s AND table = 'events_local' AND position(command, %s) > 0",
		quote(srv.database), quote(marker))
	if pending {
		q += " AND is_done = 0"
	}
	n, err := queryUint(ctx, r, q)
	if err != nil {
		return 0, fmt.Errorf("mutations on %s: %w", r.addr, err)
	}
	return n, nil
}

// waitMutation waits until r has the marker's mutation and it is done.
func waitMutation(ctx context.Context, srv *server, r *replica, marker string) error {
	for {
		all, err := mutations(ctx, srv, r, marker, false)
		if err != nil {
			return err
		}
		if all > 0 {
			open, err := mutations(ctx, srv, r, marker, true)
			if err != nil {
				return err
			}
			if open == 0 {
				return nil
			}
		}
		if !retry.Sleep(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// Verify counts the requests' rows on every replica of every shard, with
// and without FINAL: all must be 0, else erasure.ErrRowsLeft (the runner
// then deletes them in a new batch).
func (e *eraser) Verify(ctx context.Context, reqs []*erasure.Request) error {
	cond := where(reqs)
	for _, srv := range e.servers {
		for _, r := range srv.replicas {
			for _, final := range []bool{false, true} {
				n, err := countOn(ctx, srv, r, cond, final)
				if err != nil {
					return err
				}
				if n > 0 {
					return fmt.Errorf("%w: %d on %s (final %t)", erasure.ErrRowsLeft, n, r.addr, final)
				}
			}
		}
	}
	return nil
}

// DeleteDeadLetters reads DEAD_LETTER whole and removes the requests'
// users' events from it: a dead letter that holds only theirs is deleted,
// one that also holds other users' events is published again without
// theirs (same subject and headers, a derived message id) and then the
// original is deleted.
func (e *eraser) DeleteDeadLetters(ctx context.Context, reqs []*erasure.Request) (map[string]int, error) {
	m := newMatcher(reqs)
	st, err := e.js.Stream(ctx, streams.DeadLetter)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	if info.State.Msgs == 0 {
		return out, nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read dead letter %d: %w", seq, err)
		}
		hit, rest, err := m.deadLetter(raw)
		if err != nil {
			e.s.log.Warn("eraser: dead letter not read, left as is", zap.Uint64("seq", seq), zap.Error(err))
			continue
		}
		if len(hit) == 0 {
			continue
		}
		if rest != nil {
			msg := nats.NewMsg(raw.Subject)
			msg.Header = raw.Header
			msg.Header.Set(jetstream.MsgIDHeader, raw.Header.Get(jetstream.MsgIDHeader)+":erased:"+strconv.FormatUint(seq, 10))
			msg.Data = rest
			if _, err := e.js.PublishMsg(ctx, msg); err != nil {
				return nil, fmt.Errorf("rewrite dead letter %d: %w", seq, err)
			}
		}
		if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("delete dead letter %d: %w", seq, err)
		}
		for id := range hit {
			out[id]++
		}
	}
	return out, nil
}

// matcher finds the requests' users in dead letters.
type matcher map[string]map[string]*erasure.Request // tenant -> user -> request

func newMatcher(reqs []*erasure.Request) matcher {
	m := matcher{}
	for _, r := range reqs {
		if m[r.Tenant] == nil {
			m[r.Tenant] = map[string]*erasure.Request{}
		}
		for _, u := range r.Users {
			m[r.Tenant][u] = r
		}
	}
	return m
}

// match returns the request erasing an event, or nil.
func (m matcher) match(tenant, user string, ts time.Time) *erasure.Request {
	r := m[tenant][user]
	if r == nil || !r.Suppression().Covers(ts) {
		return nil
	}
	return r
}

// deadLetter returns the requests whose users' events raw holds, and the
// body without them (nil when nothing else is left, or when the body is
// one item or a message that cannot be split: then the whole dead letter
// goes).
func (m matcher) deadLetter(raw *jetstream.RawStreamMsg) (map[string]bool, []byte, error) {
	hit := map[string]bool{}
	source := raw.Header.Get(streams.HeaderSource)
	switch {
	case raw.Header.Get(streams.HeaderSourceIndex) != "" || strings.HasPrefix(raw.Subject, "deadletter.ingest.invalid."):
		m.item(raw, hit)
		return hit, nil, nil
	case strings.HasPrefix(source, "batches."):
		b, err := batch.Decode(raw.Data)
		if err != nil {
			return nil, nil, err
		}
		kept := b.Keep(func(i int) bool {
			r := m.match(b.Tenant[i], b.UserID[i], time.UnixMicro(b.TS[i]))
			if r != nil {
				hit[r.ID] = true
			}
			return r == nil
		})
		if len(hit) == 0 || kept.Len() == 0 {
			return hit, nil, nil
		}
		return hit, batch.Encode(kept), nil
	case strings.HasPrefix(source, "events.") || strings.HasPrefix(source, "ingest."):
		events, err := event.Decode(raw.Data)
		if err != nil {
			return nil, nil, err
		}
		kept := events[:0]
		for _, ev := range events {
			if r := m.match(ev.Tenant, ev.UserID, ev.TS); r != nil {
				hit[r.ID] = true
				continue
			}
			kept = append(kept, ev)
		}
		if len(hit) == 0 || len(kept) == 0 {
			return hit, nil, nil
		}
		return hit, event.AppendEncoded(nil, kept), nil
	default:
		// A producer's message refused whole (malformed): it cannot be
		// parsed into events, so it goes whole when it names a user as a
		// JSON string or number.
		m.mentions(raw, hit)
		return hit, nil, nil
	}
}

// item finds the user of one item dead-lettered as sent (JSON); its
// tenant is the Surge-Tenant header. Only the user's id is matched: an
// invalid item's time may be what was invalid, so a request with Before
// takes it too.
func (m matcher) item(raw *jetstream.RawStreamMsg, hit map[string]bool) {
	users := m[raw.Header.Get(streams.HeaderTenant)]
	if users == nil {
		return
	}
	var item map[string]json.RawMessage
	if json.Unmarshal(raw.Data, &item) != nil {
		m.mentions(raw, hit)
		return
	}
	for _, field := range []string{"user_id", "userId", "anonymousId"} {
		var u any
		if json.Unmarshal(item[field], &u) != nil || u == nil {
			continue
		}
		user, ok := u.(string)
		if !ok { // a number, as its text
			user = string(item[field])
		}
		if r := users[user]; r != nil {
			hit[r.ID] = true
		}
	}
}

// mentions finds the users named in a body that does not parse: any of
// the tenant's users whose id appears as a JSON string (or bare, for a
// number).
func (m matcher) mentions(raw *jetstream.RawStreamMsg, hit map[string]bool) {
	for user, r := range m[raw.Header.Get(streams.HeaderTenant)] {
		q, _ := json.Marshal(user)
		if bytes.Contains(raw.Data, q) {
			hit[r.ID] = true
		}
	}
}
