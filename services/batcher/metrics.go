package batcher

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a batch is cut, the label of surge_batcher_cut_total.
const (
	cutRows     = "rows"
	cutBytes    = "bytes"
	cutAge      = "age"
	cutShutdown = "shutdown"
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
	deadLetters     *prometheus.CounterVec
	purgeFailures   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_batches_total",
			Help: "Batches published to BATCHES, by shard.",
		}, []string{"shard"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_rows_total",
			Help: "Rows published in batches, by shard.",
		}, []string{"shard"}),
		batchRows: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_batcher_batch_rows",
			Help:    "Rows per published batch, by shard.",
			Buckets: prometheus.ExponentialBuckets(10, 2, 14),
		}, []string{"shard"}),
		batchBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_batcher_batch_bytes",
			Help:    "Encoded bytes per published batch, by shard.",
			Buckets: prometheus.ExponentialBuckets(1024, 2, 14),
		}, []string{"shard"}),
		cuts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_cut_total",
			Help: "Batches cut, by shard and reason (rows, bytes, age, shutdown).",
		}, []string{"shard", "reason"}),
		publishDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "surge_batcher_publish_duration_seconds",
			Help:    "Time to publish a batch to its PubAck, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		publishRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_publish_retries_total",
			Help: "Failed publish attempts of batches and dead letters, retried, by shard.",
		}, []string{"shard"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_batcher_consumer_pending",
			Help: "EVENTS messages of the shard not yet read by the batcher, as of its last read.",
		}, []string{"shard"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_dead_letters_total",
			Help: "Corrupt EVENTS messages published to DEAD_LETTER and skipped, by shard.",
		}, []string{"shard"}),
		purgeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_batcher_purge_failures_total",
			Help: "Failed purges of EVENTS below a published batch, retried at the next batch, by shard.",
		}, []string{"shard"}),
	}
	reg.MustRegister(m.batches, m.rows, m.batchRows, m.batchBytes, m.cuts, m.publishDuration,
		m.publishRetries, m.pending, m.deadLetters, m.purgeFailures)
	return m
}

// shardMetrics are one shard's series, looked up once.
type shardMetrics struct {
	batches, rows, retries, deadLetters, purgeFailures prometheus.Counter
	cuts                                               map[string]prometheus.Counter
	pending                                            prometheus.Gauge
	batchRows, batchBytes                              prometheus.Observer
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
		batchRows:     m.batchRows.WithLabelValues(label),
		batchBytes:    m.batchBytes.WithLabelValues(label),
		cuts:          make(map[string]prometheus.Counter),
	}
	for _, r := range []string{cutRows, cutBytes, cutAge, cutShutdown} {
		sm.cuts[r] = m.cuts.WithLabelValues(label, r)
	}
	return sm
}
