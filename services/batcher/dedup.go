package batcher

// Event-level deduplication (issue 20): a shard drops an event whose
// (tenant, event_id) it has already published within the window, when
// the id came from the client (never an id Surge made up, IDGenerated).
// Every event of a (tenant, user) reaches one shard, so the shard's owner
// sees every copy sent with the same user id; a copy sent with another
// user id lands on another shard and is not found: the key is per shard.
//
// Never lose. A copy is dropped only when its original is known to be
// published, in one of two ways:
//
//   - the original is in a batch this shard published and got the PubAck
//     for (its generation in the seenSet committed at the PubAck, or at
//     start-up from the DEDUP records, each written only after its
//     batch's PubAck); or
//   - the original is in the open batch (the open generation), before the
//     copy. Batches are cut at message boundaries in sequence order, so
//     the batch that holds the copy's message holds the original's too,
//     and is published whole or not at all. When a cut batch cannot be
//     published (held at shutdown, lease lost) its generation is never
//     committed, so a copy in a later batch passes; finish publishes the
//     partial batch only after the held one.
//
// A crash re-reads EVENTS after the last batch in BATCHES (or from the
// first message EVENTS keeps): the new tenure starts from the records, and
// every key in them belongs to a batch that is durable in BATCHES, so a
// re-read event it drops is stored by that batch. A re-cut batch with the
// same id (<shard>:<first>-<last>) that JetStream drops as a duplicate
// holds only keys that the first one holds or that were dropped as
// copies of stored events. A record that fails to publish, a DEDUP stream
// lost or wiped, records evicted by max_ids_per_shard or the stream's
// limits: each only forgets keys, which lets duplicates through.
//
// A batch may cover messages that contribute no rows (all their events
// were copies), exactly like empty messages: its range starts at its
// first row's message, the resume point and the EVENTS purge follow
// LastSeq, and the sink's presence check asks only for the messages that
// have rows in the batch, so a message without rows is never "missing".

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/streams"
)

// DedupConfig is event-level deduplication by (tenant, event_id).
type DedupConfig struct {
	// Enabled turns deduplication on.
	Enabled bool `yaml:"enabled" env:"ENABLED"`
	// Window is how long a published event id is remembered: a copy sent
	// within it is dropped. It is also the DEDUP stream's max age.
	Window time.Duration `yaml:"window" env:"WINDOW"`
	// MaxIDsPerShard bounds the ids a shard remembers (memory and DEDUP
	// disk); beyond it the oldest hour (1/24 of the window) is forgotten,
	// which only lets duplicates through.
	MaxIDsPerShard int `yaml:"max_ids_per_shard" env:"MAX_IDS_PER_SHARD"`
}

// DefaultDedupConfig is on, for 24 hours, up to 1,000,000 ids a shard
// (about 45 MB of memory and 16 MB of DEDUP a shard when full, see
// BenchmarkSeenSet and BenchmarkDedupDisk).
func DefaultDedupConfig() DedupConfig {
	return DedupConfig{Enabled: true, Window: 24 * time.Hour, MaxIDsPerShard: 1_000_000}
}

// Validate reports every problem of the dedup settings.
func (c DedupConfig) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	if c.Window < time.Second {
		errs = append(errs, fmt.Errorf("window must be at least 1s, got %s", c.Window))
	}
	if c.MaxIDsPerShard < 1 {
		errs = append(errs, fmt.Errorf("max_ids_per_shard must be at least 1, got %d", c.MaxIDsPerShard))
	}
	return errors.Join(errs...)
}

// maxBytes bounds the DEDUP stream: every shard's ids at 16 bytes, twice
// over for message overhead and for records of re-cut batches.
func (c DedupConfig) maxBytes(shards int) int64 {
	return max(int64(shards)*int64(c.MaxIDsPerShard)*streams.DedupKeySize*2, 1<<20)
}

type dedupMetrics struct {
	dropped, recordFailures *prometheus.CounterVec
	ids                     *prometheus.GaugeVec
}

func newDedupMetrics(reg prometheus.Registerer) *dedupMetrics {
	f := promauto.With(reg)
	return &dedupMetrics{
		dropped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_duplicates_dropped_total",
			Help: "Events dropped because an event with the same tenant and client event_id was published within the dedup window, by shard.",
		}, []string{"shard"}),
		recordFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_dedup_record_failures_total",
			Help: "Dedup records of published batches that could not be written to DEDUP (their ids are forgotten at the next start: duplicates may pass), by shard.",
		}, []string{"shard"}),
		ids: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_batcher_dedup_ids",
			Help: "Event ids a shard remembers for deduplication.",
		}, []string{"shard"}),
	}
}

// dedup is one shard loop's deduplication state.
type dedup struct {
	seen *seenSet
	// keys are the open batch's, in order, for its record.
	keys []dedupKey
	buf  []byte

	stream                  lastMsgReader // DEDUP
	dropped, recordFailures prometheus.Counter
	ids                     prometheus.Gauge
}

// dedupCut is what a cut batch carries for dedup: its generation in the
// set and its keys.
type dedupCut struct {
	gen  uint32
	keys []dedupKey
}

func newDedup(c DedupConfig, stream lastMsgReader, m *dedupMetrics, label string) *dedup {
	return &dedup{
		seen:           newSeenSet(c.Window, c.MaxIDsPerShard),
		stream:         stream,
		dropped:        m.dropped.WithLabelValues(label),
		recordFailures: m.recordFailures.WithLabelValues(label),
		ids:            m.ids.WithLabelValues(label),
	}
}

// dropDuplicates returns events without the copies of events already
// published or in the open batch, and adds the keys of the rest to the
// open batch. It filters in place. A nil d (dedup off) keeps everything.
func (d *dedup) dropDuplicates(events []event.Event, now time.Time) []event.Event {
	if d == nil {
		return events
	}
	d.seen.advance(now)
	kept := events[:0]
	for i := range events {
		e := &events[i]
		if !e.IDGenerated {
			var k dedupKey
			k, d.buf = keyOf(d.buf, e.Tenant, e.EventID)
			if d.seen.check(k) {
				d.dropped.Inc()
				continue
			}
			d.keys = append(d.keys, k)
		}
		kept = append(kept, *e)
	}
	return kept
}

// cutKeys hands over the open batch's generation and keys with the batch
// being cut.
func (d *dedup) cutKeys() dedupCut {
	if d == nil {
		return dedupCut{}
	}
	c := dedupCut{gen: d.seen.cut(), keys: d.keys}
	d.keys = nil
	return c
}

// dedupPublished remembers the keys of a batch that got its PubAck, and
// writes them to DEDUP for the shard's next start. One attempt: a record
// lost only forgets keys.
func (l *shardLoop) dedupPublished(ctx context.Context, c *cutBatch) {
	d := l.dedup
	if d == nil || len(c.dedup.keys) == 0 {
		return
	}
	d.seen.commit(c.dedup.gen, time.Now())
	d.ids.Set(float64(d.seen.len()))
	data := make([]byte, 0, len(c.dedup.keys)*streams.DedupKeySize)
	for _, k := range c.dedup.keys {
		data = append(data, k[:]...)
	}
	pctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
	defer cancel()
	if _, err := l.js.PublishMsg(pctx, streams.DedupMsg(l.k, c.b.ID(), data)); err != nil {
		d.recordFailures.Inc()
		l.log.Warn("dedup record not written: after a restart copies of this batch's events may be stored again",
			zap.String("batch_id", c.b.ID()), zap.Error(err))
	}
}

// rebuildDedup fills the set from the shard's DEDUP records, up to the
// last one there at start. Whatever it cannot read (an error, a timeout)
// is forgotten: duplicates may pass, nothing is lost.
func (l *shardLoop) rebuildDedup(ctx context.Context) {
	d := l.dedup
	if d == nil {
		return
	}
	start := time.Now()
	n, err := l.readDedup(ctx)
	d.ids.Set(float64(d.seen.len()))
	fields := []zap.Field{zap.Int("records", n), zap.Int("ids", d.seen.len()), zap.Duration("took", time.Since(start))}
	if err != nil && ctx.Err() == nil {
		l.log.Warn("dedup state read in part: copies of earlier events may be stored again", append(fields, zap.Error(err))...)
		return
	}
	l.log.Info("dedup state read", fields...)
}

func (l *shardLoop) readDedup(ctx context.Context) (int, error) {
	d := l.dedup
	subject := streams.DedupSubject(l.k)
	rctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
	last, err := d.stream.GetLastMsgForSubject(rctx, subject)
	cancel()
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last record: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
	cons, err := l.js.OrderedConsumer(octx, streams.Dedup, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	cancel()
	if err != nil {
		return 0, fmt.Errorf("ordered consumer: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return 0, fmt.Errorf("messages: %w", err)
	}
	defer it.Stop()
	n := 0
	for {
		nctx, cancel := context.WithTimeout(ctx, l.cfg.PublishTimeout)
		msg, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			return n, fmt.Errorf("next record: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return n, fmt.Errorf("record metadata: %w", err)
		}
		// A record is a batch published before: a generation of its own.
		data := msg.Data()
		for i := 0; i+streams.DedupKeySize <= len(data); i += streams.DedupKeySize {
			d.seen.put(dedupKey(data[i : i+streams.DedupKeySize]))
		}
		d.seen.commit(d.seen.cut(), meta.Timestamp)
		n++
		if meta.Sequence.Stream >= last.Sequence {
			return n, nil
		}
	}
}

// ensureDedup creates or updates the DEDUP stream (its max age is the
// window) and returns it, retrying until it answers or ctx ends.
func (s *Service) ensureDedup(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	sc := streams.DedupDefinition(s.cfg.Streams, s.cfg.Dedup.Window, s.cfg.Dedup.maxBytes(s.cfg.Shards))
	var st jetstream.Stream
	err := retry.Do(ctx, s.cfg.Retry, func() error {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.PublishTimeout)
		defer cancel()
		var err error
		st, err = js.CreateOrUpdateStream(sctx, sc)
		return err
	}, func(attempt int, err error, wait time.Duration) {
		s.host.Logger.Warn("ensure stream, retrying", zap.String("stream", streams.Dedup), zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", streams.Dedup, err)
	}
	return st, nil
}
