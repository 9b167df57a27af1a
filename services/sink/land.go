package sink

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// inHand is the batch a shard works on. The first attempt takes the
// batch decoded on arrival; a later one decodes the message again. So no
// attempt keeps the decoded rows alive once it has handed them to the
// driver, which holds its own copy while the block goes to ClickHouse:
// that would be a third copy of every row, the largest share of the sink's
// peak heap with wide batches.
type inHand struct {
	data    []byte
	b       *batch.Batch
	lastSeq uint64
}

func newInHand(data []byte, b *batch.Batch) *inHand {
	return &inHand{data: data, b: b, lastSeq: b.LastSeq}
}

// take is the batch, decoded on arrival or again.
func (h *inHand) take() (*batch.Batch, error) {
	if b := h.b; b != nil {
		h.b = nil
		return b, nil
	}
	return batch.Decode(h.data)
}

// land inserts the rows of the batch in hand that ClickHouse does not hold
// yet and acks msg. An error leaves msg unacked; shard.ErrNotOwner says the
// shard's lease is lost, and nothing was inserted or acked after that was
// known.
//
// What is left to insert is chosen by strategy (remaining), then every
// batch takes the same path: fence, insert, metrics, ack.
func (l *shardLoop) land(ctx context.Context, msg jetstream.Msg, h *inHand, id string, attempt int) error {
	replay := msg.Headers().Get(streams.HeaderReplay)
	span := trace.SpanFromContext(ctx)
	if replay != "" {
		span.SetAttributes(attribute.Bool("surge.replay", true))
	}
	rest, err := l.rest(ctx, h, replay != "")
	if err != nil {
		return err
	}
	if rest.Len() == 0 {
		if replay == "" {
			l.landed(h.lastSeq)
		}
		if err := l.ack(ctx, msg); err != nil {
			return err
		}
		l.m.duplicates.Inc()
		span.SetAttributes(attribute.Bool("surge.duplicate", true))
		return nil
	}

	qctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
	defer cancel()
	qid := queryID(id, trace.SpanContextFromContext(ctx), attempt)
	// log_queries: servers that log no queries by default (the Debian
	// package's) still record the insert in system.query_log: one row a batch.
	qctx = clickhouse.Context(qctx, clickhouse.WithQueryID(qid), clickhouse.WithSettings(clickhouse.Settings{"log_queries": 1}))
	// The last attempt's id stays: find the insert in system.query_log by it.
	span.SetAttributes(attribute.String(AttrQueryID, qid))
	// Fencing: a shard whose lease is lost inserts nothing more. The one
	// insert sent just before the lease ran out and landing after the next
	// owner asked the server is caught by ClickHouse (see Service).
	if !l.holds() {
		return shard.ErrNotOwner
	}
	l.w.Waiting("insert into clickhouse " + l.store.Addr())
	start := time.Now()
	rows, receivedAt, err := l.insert(qctx, h, rest, replay != "")
	switch {
	case replay != "":
		// A replayed batch's rows sit below or among the watermark's: the
		// next batch asks the server again, whatever the outcome.
		l.known = false
	case err != nil && (refusedAtCommit(err) || errors.Is(err, errNoTurn)):
		// Nothing landed, for sure: the watermark stands.
	case err != nil:
		// The block may or may not have landed: ask the server before the
		// next attempt.
		l.known = false
	default:
		l.landed(h.lastSeq)
	}
	if err != nil {
		return fmt.Errorf("insert batch %s: %w", id, err)
	}
	now := time.Now()
	l.m.insertDuration.Observe(now.Sub(start).Seconds())
	l.m.rows.Add(float64(rows))
	l.m.inserted.Inc()
	if replay == "" {
		// A replayed dead letter's rows are as old as its failure: they
		// would only blur how long events take to become queryable.
		l.m.observeEndToEnd(receivedAt, now)
	}
	span.SetAttributes(attribute.Int("surge.rows_inserted", rows))
	fields := append(telemetry.TraceFields(ctx), zap.String("batch_id", id), zap.String("query_id", qid),
		zap.Int("rows", rows), zap.Duration("took", now.Sub(start)))
	if replay != "" {
		fields = append(fields, zap.String("replay", replay))
	}
	l.log.Debug("batch inserted", fields...)
	// The rows are in; a lease lost meanwhile leaves the batch unacked,
	// and the next owner finds it at or below the watermark.
	return l.ack(ctx, msg)
}

// presenceWaitMax bounds how long a batch waits for a silent replica that
// may hold it alone (presenceUnknown): a killed replica is back in
// seconds; one still gone after this long may never be.
const presenceWaitMax = time.Minute

// insert sends rest and returns how many rows it sent, and when they were
// received. A commit that lost a race with a column's ALTER landed nothing
// and is sent again at once, on the same replica: the other one races the
// same ALTER, and the shard's backoff is for servers in trouble. Each time
// the rest is worked out again, as the rows sent last are gone.
func (l *shardLoop) insert(ctx context.Context, h *inHand, rest *batch.Batch, replay bool) (rows int, receivedAt []int64, err error) {
	for n := 1; ; n++ {
		rows, receivedAt = rest.Len(), rest.ReceivedAt
		err = l.store.Insert(ctx, rest)
		if err == nil || !refusedAtCommit(err) || n == commitRaceAttempts || !retry.Sleep(ctx, commitRaceWait) {
			return rows, receivedAt, err
		}
		if !l.holds() {
			return 0, nil, shard.ErrNotOwner
		}
		if rest, err = l.rest(ctx, h, replay); err != nil || rest.Len() == 0 {
			// An empty rest, which a refused commit never leaves, is all there.
			return 0, nil, err
		}
	}
}

// rest is the part of the batch in hand that ClickHouse does not hold
// yet (remaining).
func (l *shardLoop) rest(ctx context.Context, h *inHand, replay bool) (*batch.Batch, error) {
	b, err := h.take()
	if err != nil {
		return nil, err
	}
	return l.remaining(ctx, b, replay)
}

// remaining is the part of b that ClickHouse does not hold yet.
//
// A batch from the batcher is cut after the last one and lands in order:
// while the shard's watermark is known (the last sequence this tenure
// landed), the rows above it are left, with no read at all.
//
// At the start of a tenure and after an insert whose outcome is unknown,
// the watermark is not known: the server is asked which of b's EVENTS
// messages it holds (store.Present, a read bounded by the batch whatever
// the table holds), and the rows of the others are left. Rows at or
// below the floor of what this process saw inserted on a replicated
// server are not asked about: they landed. An EVENTS
// message always lands whole in one block, so a message present means all
// of its rows are.
//
// A replayed dead letter always goes by presence: batches after it have
// usually landed meanwhile. The check is made before every attempt, so
// an insert whose outcome is unknown is never repeated blindly, and
// replaying a dead letter twice inserts nothing the second time.
func (l *shardLoop) remaining(ctx context.Context, b *batch.Batch, replay bool) (*batch.Batch, error) {
	if l.known && !replay {
		return b.After(l.watermark), nil
	}
	if !replay {
		// Rows this process saw land need no read.
		b = b.After(l.store.Floor(l.k))
		if b.Len() == 0 {
			return b, nil
		}
	}
	rctx, cancel := context.WithTimeout(ctx, l.insertTimeout)
	defer cancel()
	l.w.Waiting("sequences from clickhouse " + l.store.Addr())
	present, err := l.store.Present(rctx, l.k, b)
	var unknown *presenceUnknown
	if errors.As(err, &unknown) {
		if l.silentSince.IsZero() {
			l.silentSince = time.Now()
		}
		if time.Since(l.silentSince) < presenceWaitMax {
			return nil, err
		}
		// A replica gone for longer may never come back: a batch that
		// landed on it alone is lost unless it lands again. Twice is
		// better than never, and ReplacingMergeTree folds the rows.
		l.log.Warn("a replica that may hold the batch alone stayed silent: going by the replicas that answered",
			zap.Duration("waited", time.Since(l.silentSince)), zap.Error(err))
		l.m.guesses.Inc()
		present, err = unknown.answered, nil
	}
	if err != nil {
		return nil, err
	}
	return b.Without(present), nil
}

// landed records that every row of a batch up to seq is in ClickHouse:
// the watermark is known from here on.
func (l *shardLoop) landed(seq uint64) {
	if l.known {
		seq = max(seq, l.watermark)
	}
	l.setWatermark(seq)
}

func (l *shardLoop) setWatermark(wm uint64) {
	l.watermark, l.known = wm, true
	l.m.watermark.Set(float64(wm))
}

// ack confirms msg with the server: the shard made progress. A shard whose
// lease is lost acks nothing (shard.ErrNotOwner): the batch goes back to the next
// owner, which finds the rows landed at or below the watermark. A lost ack
// is harmless for the same reason: its failure is logged, and the loop,
// unsure, has the batch handed out again after its next empty fetch
// (redeliverLost) rather than after the ack wait.
func (l *shardLoop) ack(ctx context.Context, msg jetstream.Msg) error {
	if !l.holds() {
		return shard.ErrNotOwner
	}
	l.release()
	actx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		l.log.Warn("ack batch", zap.Error(err))
		l.unsure = true
		return nil
	}
	l.w.Progress()
	return nil
}

// AttrQueryID is the insert span's attribute holding the ClickHouse
// query_id of the insert.
const AttrQueryID = "db.clickhouse.query_id"

// queryID names an insert in system.query_log and system.processes: the
// batch id, the trace id when the span is sampled, and the attempt (a
// retried insert must not collide with one the server may still run).
func queryID(batchID string, sc trace.SpanContext, attempt int) string {
	id := "surge-sink-" + batchID
	if sc.IsSampled() {
		id += "-" + sc.TraceID().String()
	}
	return id + "-" + strconv.Itoa(attempt)
}
