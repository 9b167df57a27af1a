package batcher

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/telemetry"
)

type metrics struct {
	batches         *prometheus.CounterVec
	rows            *prometheus.CounterVec
	batchRows       *prometheus.HistogramVec
	batchBytes      *prometheus.HistogramVec
	cuts            *prometheus.CounterVec
	publishDuration prometheus.Histogram
	publishRetries  *prometheus.CounterVec
	pending         *prometheus.GaugeVec
	linger          *prometheus.GaugeVec
	deadLetters     *prometheus.CounterVec
	purgeFailures   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		batches: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_batches_total",
			Help: "Batches published to BATCHES, by shard.",
		}, []string{"shard"}),
		rows: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_rows_total",
			Help: "Rows published in batches, by shard.",
		}, []string{"shard"}),
		batchRows: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_batcher_batch_rows",
			Help:    "Rows per published batch, by shard.",
			Buckets: telemetry.BatchRowsBuckets,
		}, []string{"shard"}),
		batchBytes: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_batcher_batch_bytes",
			Help:    "Encoded bytes per published batch, by shard.",
			Buckets: telemetry.BatchBytesBuckets,
		}, []string{"shard"}),
		cuts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_cut_total",
			Help: "Batches cut, by shard and reason (rows, bytes, age, shutdown).",
		}, []string{"shard", "reason"}),
		publishDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "surge_batcher_publish_duration_seconds",
			Help:    "Time to publish a batch to its PubAck, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		publishRetries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_publish_retries_total",
			Help: "Failed publish attempts of batches and dead letters, retried, by shard.",
		}, []string{"shard"}),
		pending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_batcher_consumer_pending",
			Help: "EVENTS messages of the shard not yet read by the batcher: the pending count of its last read, checked every few seconds against the subject's last message (at least 1 while that one is unread, 0 once it is read).",
		}, []string{"shard"}),
		linger: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_batcher_linger_seconds",
			Help: "How old the shard's open batch must be before an idle sink cuts it, as of the last cut: batch.min_age while the sink keeps up, doubling up to batch.max_age while batches wait for it.",
		}, []string{"shard"}),
		deadLetters: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_dead_letters_total",
			Help: "Corrupt EVENTS messages published to DEAD_LETTER and skipped, by shard.",
		}, []string{"shard"}),
		purgeFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_purge_failures_total",
			Help: "Failed purges of EVENTS below a published batch, retried at the next batch, by shard.",
		}, []string{"shard"}),
	}
}

// shardMetrics are one shard's series, looked up once: the shard loop
// touches them for every message and batch.
type shardMetrics struct {
	batches, rows, retries, deadLetters, purgeFailures prometheus.Counter
	cuts                                               map[batch.CutReason]prometheus.Counter
	pending, linger                                    prometheus.Gauge
	batchRows, batchBytes, publishDuration             prometheus.Observer
}

func (m *metrics) forShard(k int) shardMetrics {
	label := strconv.Itoa(k)
	sm := shardMetrics{
		batches:       m.batches.WithLabelValues(label),
		rows:          m.rows.WithLabelValues(label),
		retries:       m.publishRetries.WithLabelValues(label),
		deadLetters:   m.deadLetters.WithLabelValues(label),
		purgeFailures: m.purgeFailures.WithLabelValues(label),
		pending:       m.pending.WithLabelValues(label),
		linger:        m.linger.WithLabelValues(label),
		batchRows:     m.batchRows.WithLabelValues(label),
		batchBytes:    m.batchBytes.WithLabelValues(label),
		// One histogram for the service: a PubAck's wait is the stream's.
		publishDuration: m.publishDuration,
		cuts:            make(map[batch.CutReason]prometheus.Counter, len(batch.CutReasons)),
	}
	// Every reason is a series from the start, at zero.
	for _, r := range batch.CutReasons {
		sm.cuts[r] = m.cuts.WithLabelValues(label, string(r))
	}
	return sm
}
