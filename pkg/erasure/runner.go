package erasure

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"go.uber.org/zap"
)

// ErrRowsLeft is what Verify returns when rows of the users are still
// there after their mutation finished: the runner deletes again.
var ErrRowsLeft = errors.New("rows of erased users left")

// RequestStore is what the runner needs of the bucket.
type RequestStore interface {
	// Pending reads the unfinished requests, oldest first.
	Pending(ctx context.Context) ([]*Request, error)
	// Save writes a request back at the revision it was read at.
	Save(ctx context.Context, r *Request) error
}

var _ RequestStore = (*Store)(nil)

// Actions are the runner's effects on the world. Each is idempotent: the
// runner repeats the one a crash interrupted.
type Actions interface {
	// Suppress writes the suppression keys of r's users.
	Suppress(ctx context.Context, r *Request) error
	// Mark reads every logical shard's landing mark now.
	Mark(ctx context.Context) (map[int]Mark, error)
	// Landed reports whether every shard's sink landed past its mark.
	Landed(ctx context.Context, marks map[int]Mark) (bool, error)
	// Count counts each request's rows per ClickHouse shard, before the
	// deletion: request id -> shard -> rows.
	Count(ctx context.Context, reqs []*Request) (map[string]map[string]uint64, error)
	// Delete runs the deletion batch's one mutation per ClickHouse shard
	// (unless the shard already ran it) and waits until it finished on
	// every replica.
	Delete(ctx context.Context, batch string, reqs []*Request) error
	// DeleteDeadLetters removes the requests' users' events from
	// DEAD_LETTER: request id -> dead letters changed.
	DeleteDeadLetters(ctx context.Context, reqs []*Request) (map[string]int, error)
	// Verify checks that no row of the requests' users is left on any
	// replica, with and without FINAL.
	Verify(ctx context.Context, reqs []*Request) error
}

// Runner moves the requests along requested -> suppressed -> landed-past
// -> deleted -> verified. One runner runs at a time (the sink runs it
// under the lease "eraser"); it keeps no state of its own, so a runner
// that starts after a crash resumes every request where the bucket says
// it is.
type Runner struct {
	Store   RequestStore
	Actions Actions
	// Settle is how long after its suppression a request's landing marks
	// are read: longer than a suppression takes to reach every watcher,
	// plus a batch's max age and its publish, so every batch that could
	// hold a suppressed user's event is in BATCHES by then.
	Settle time.Duration
	Log    *zap.Logger
	// Now and NewBatch are the clock and the deletion batch ids; tests
	// replace them.
	Now      func() time.Time
	NewBatch func() string
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now().UTC()
	}
	return time.Now().UTC()
}

func (r *Runner) newBatch() string {
	if r.NewBatch != nil {
		return r.NewBatch()
	}
	return "eb-" + strings.ToLower(ulid.Make().String())
}

// Step moves every pending request as far as it can go now. It returns
// whether some request is still pending (the caller steps again after a
// pause), or the first error (the request that met it records it).
func (r *Runner) Step(ctx context.Context) (pending bool, err error) {
	reqs, err := r.Store.Pending(ctx)
	if err != nil {
		return true, err
	}
	if len(reqs) == 0 {
		return false, nil
	}
	for _, q := range reqs {
		if err := r.advance(ctx, q); err != nil {
			return true, r.failed(ctx, []*Request{q}, err)
		}
	}
	if group := deletionBatch(reqs); len(group) > 0 {
		if err := r.delete(ctx, group); err != nil {
			return true, r.failed(ctx, group, err)
		}
	}
	for _, q := range reqs {
		if !q.Done() {
			return true, nil
		}
	}
	return false, nil
}

// advance takes one request through suppressed and landed-past.
func (r *Runner) advance(ctx context.Context, q *Request) error {
	if q.State == Requested {
		if err := r.Actions.Suppress(ctx, q); err != nil {
			return fmt.Errorf("suppress: %w", err)
		}
		q.State, q.SuppressedAt, q.LastError = Suppressed, r.now(), ""
		if err := r.Store.Save(ctx, q); err != nil {
			return err
		}
		r.log().Info("erasure: users suppressed", zap.String("request", q.ID), zap.Int("users", q.UserCount))
	}
	if q.State != Suppressed {
		return nil
	}
	if q.Marks == nil {
		if r.now().Sub(q.SuppressedAt) < r.Settle {
			return nil
		}
		marks, err := r.Actions.Mark(ctx)
		if err != nil {
			return fmt.Errorf("read landing marks: %w", err)
		}
		q.Marks, q.MarkedAt, q.LastError = marks, r.now(), ""
		if err := r.Store.Save(ctx, q); err != nil {
			return err
		}
	}
	landed, err := r.Actions.Landed(ctx, q.Marks)
	if err != nil {
		return fmt.Errorf("check landing: %w", err)
	}
	if !landed {
		return nil
	}
	q.State, q.LandedAt, q.LastError = LandedPast, r.now(), ""
	if err := r.Store.Save(ctx, q); err != nil {
		return err
	}
	r.log().Info("erasure: landed past the marks", zap.String("request", q.ID))
	return nil
}

// MaxBatchUsers bounds the users of one deletion batch: its mutation's
// command holds every user id, and ReplicatedMergeTree keeps it in a
// ZooKeeper node (1 MiB at most by default).
const MaxBatchUsers = MaxUsers

// deletionBatch picks the requests to delete together: an unfinished
// batch first (a crash interrupted it, so it keeps its id and its
// mutation is not run twice), else the landed requests without one, the
// oldest first, up to MaxBatchUsers users (at least one request).
func deletionBatch(reqs []*Request) []*Request {
	var open []*Request
	for _, q := range reqs {
		if (q.State == LandedPast || q.State == Deleted) && q.Batch != "" {
			open = append(open, q)
		}
	}
	if len(open) > 0 {
		first := open[0].Batch
		return slices.DeleteFunc(open, func(q *Request) bool { return q.Batch != first })
	}
	var fresh []*Request
	users := 0
	for _, q := range reqs {
		if q.State != LandedPast {
			continue
		}
		if len(fresh) > 0 && users+q.UserCount > MaxBatchUsers {
			break
		}
		fresh = append(fresh, q)
		users += q.UserCount
	}
	return fresh
}

// delete runs one deletion batch to verified: it names the batch and
// counts the rows (saved before the mutation, so a resumed batch keeps
// the counts from before it), runs the mutation, deletes the dead
// letters and verifies.
func (r *Runner) delete(ctx context.Context, group []*Request) error {
	batch := group[0].Batch
	if batch == "" {
		batch = r.newBatch()
		for _, q := range group {
			q.Batch = batch
			if err := r.Store.Save(ctx, q); err != nil {
				return err
			}
		}
	}
	var uncounted []*Request
	for _, q := range group {
		if q.CountedBatch != batch && q.State == LandedPast {
			uncounted = append(uncounted, q)
		}
	}
	if len(uncounted) > 0 {
		rows, err := r.Actions.Count(ctx, uncounted)
		if err != nil {
			return fmt.Errorf("count rows: %w", err)
		}
		for _, q := range uncounted {
			if q.RowsDeleted == nil {
				q.RowsDeleted = map[string]uint64{}
			}
			for shard, n := range rows[q.ID] {
				q.RowsDeleted[shard] += n // a second round adds what it found
			}
			q.CountedBatch = batch
			if err := r.Store.Save(ctx, q); err != nil {
				return err
			}
		}
	}
	if slices.ContainsFunc(group, func(q *Request) bool { return q.State == LandedPast }) {
		if err := r.Actions.Delete(ctx, batch, group); err != nil {
			return fmt.Errorf("delete batch %s: %w", batch, err)
		}
		dead, err := r.Actions.DeleteDeadLetters(ctx, group)
		if err != nil {
			return fmt.Errorf("delete dead letters: %w", err)
		}
		for _, q := range group {
			if q.State != LandedPast {
				continue
			}
			q.State, q.DeletedAt, q.DeadLetters, q.LastError = Deleted, r.now(), dead[q.ID], ""
			if err := r.Store.Save(ctx, q); err != nil {
				return err
			}
		}
		r.log().Info("erasure: batch deleted", zap.String("batch", batch), zap.Int("requests", len(group)))
	}
	if err := r.Actions.Verify(ctx, group); err != nil {
		if errors.Is(err, ErrRowsLeft) {
			// Rows came after the mutation (a batch cut before the
			// suppression reached its batcher, published after the
			// marks): the requests go round again, in a new batch.
			for _, q := range group {
				q.State, q.Batch, q.Rounds = LandedPast, "", q.Rounds+1
				if serr := r.Store.Save(ctx, q); serr != nil {
					return serr
				}
			}
		}
		return fmt.Errorf("verify batch %s: %w", batch, err)
	}
	for _, q := range group {
		// The raw ids go now: the record keeps their hashes and count.
		q.State, q.VerifiedAt, q.Users, q.LastError = Verified, r.now(), nil, ""
		if err := r.Store.Save(ctx, q); err != nil {
			return err
		}
		r.log().Info("erasure: request verified", zap.String("request", q.ID), zap.Any("rows_deleted", q.RowsDeleted))
	}
	return nil
}

// failed records err on the requests (best effort) and returns it.
func (r *Runner) failed(ctx context.Context, reqs []*Request, err error) error {
	if ctx.Err() != nil {
		return err
	}
	for _, q := range reqs {
		if q.LastError == err.Error() {
			continue
		}
		q.LastError = err.Error()
		if serr := r.Store.Save(ctx, q); serr != nil {
			r.log().Warn("erasure: record error", zap.String("request", q.ID), zap.Error(serr))
		}
	}
	return err
}

func (r *Runner) log() *zap.Logger {
	if r.Log == nil {
		return zap.NewNop()
	}
	return r.Log
}
