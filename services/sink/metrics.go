package sink

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/surge-events/surge/pkg/telemetry"
)

// Outcomes of a batch, the outcome label of surge_sink_batches_total.
const (
	outcomeInserted   = "inserted"    // the batch (or its part above the watermark) landed
	outcomeDuplicate  = "duplicate"   // at or below the watermark: acked without inserting
	outcomeDeadLetter = "dead_letter" // permanent failure: moved to DEAD_LETTER
)

type metrics struct {
	batches        *prometheus.CounterVec
	rows           *prometheus.CounterVec
	insertDuration *prometheus.HistogramVec
	turnWait       *prometheus.HistogramVec
	batchRows      *prometheus.HistogramVec
	batchBytes     *prometheus.HistogramVec
	retries        *prometheus.CounterVec
	deadLetters    *prometheus.CounterVec
	watermark      *prometheus.GaugeVec
	pending        *prometheus.GaugeVec
	ackPending     *prometheus.GaugeVec
	resets         *prometheus.CounterVec
	guesses        *prometheus.CounterVec
	endToEnd       prometheus.Histogram

	// The typed columns' DDL (see columnKeeper).
	ddlSeconds    prometheus.Histogram
	ddlErrors     *prometheus.CounterVec
	schemaColumns *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		batches: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_sink_batches_total",
			Help: "Batches handled, by shard and outcome (inserted, duplicate, dead_letter).",
		}, []string{"shard", "outcome"}),
		rows: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_sink_rows_inserted_total",
			Help: "Rows inserted into ClickHouse, by shard.",
		}, []string{"shard"}),
		insertDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_sink_insert_duration_seconds",
			Help:    "Duration of successful batch inserts, by shard.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"shard"}),
		turnWait: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_sink_insert_turn_wait_seconds",
			Help:    "How long a batch waited for its turn to insert on its ClickHouse server (clickhouse.max_inserts), by server.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"server"}),
		batchRows: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_sink_batch_rows",
			Help:    "Rows per batch received, by shard.",
			Buckets: telemetry.BatchRowsBuckets,
		}, []string{"shard"}),
		batchBytes: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "surge_sink_batch_bytes",
			Help:    "Encoded bytes per batch received, by shard.",
			Buckets: telemetry.BatchBytesBuckets,
		}, []string{"shard"}),
		retries: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_sink_retries_total",
			Help: "Transient failures retried, by shard.",
		}, []string{"shard"}),
		deadLetters: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_sink_dead_letters_total",
			Help: "Batches moved to the dead-letter stream, by shard: the count of surge_sink_batches_total{outcome=\"dead_letter\"}, kept under its own name for the alerts and dashboards that read it.",
		}, []string{"shard"}),
		watermark: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_sink_watermark",
			Help: "Highest EVENTS sequence held by ClickHouse, by shard.",
		}, []string{"shard"}),
		pending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_sink_consumer_pending",
			Help: "Batches waiting in BATCHES for the shard's consumer, by shard.",
		}, []string{"shard"}),
		ackPending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_sink_consumer_ack_pending",
			Help: "Batches delivered to the shard's consumer and not yet acked, by shard.",
		}, []string{"shard"}),
		resets: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_sink_consumer_resets_total",
			Help: "Consumer resets that had a batch, delivered but never received or acked (lost with a NATS node, a leader change or the last owner), handed out again at once instead of after the ack wait, by shard.",
		}, []string{"shard"}),
		guesses: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_sink_presence_guesses_total",
			Help: "Batches whose presence read went by the replicas that answered after a replica that may hold the batch alone stayed silent past the bound (1 minute), by shard: a batch that had landed there is inserted twice, and ReplacingMergeTree folds the rows when it merges.",
		}, []string{"shard"}),
		endToEnd: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "surge_sink_end_to_end_seconds",
			Help:    "Time from ingest's received_at to the row's insert.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		ddlSeconds: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "surge_schema_ddl_seconds",
			Help:    "Duration of the ALTER TABLE ... ADD COLUMN statements the sink ran, whatever their outcome.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		ddlErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_schema_ddl_errors_total",
			Help: "ALTER TABLE ... ADD COLUMN statements that failed, by ClickHouse error code (timeout, network: no answer). Codes 341 (inactive replicas apply it later), 44 and 15 (column exists) are not failures.",
		}, []string{"code"}),
		schemaColumns: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_sink_schema_columns",
			Help: "Typed property columns of the table (events_local, events), the most any ClickHouse server has as last read.",
		}, []string{"table"}),
	}
}

// shardMetrics are one shard's series, looked up once per shard loop.
type shardMetrics struct {
	inserted, duplicates, deadLettered    prometheus.Counter // surge_sink_batches_total by outcome
	rows, retries, deadLetters, resets    prometheus.Counter
	guesses                               prometheus.Counter
	insertDuration, batchRows, batchBytes prometheus.Observer
	watermark, pending, ackPending        prometheus.Gauge
	endToEnd                              prometheus.Observer // shared by every shard
}

func (m *metrics) forShard(k int) shardMetrics {
	label := strconv.Itoa(k)
	return shardMetrics{
		inserted:       m.batches.WithLabelValues(label, outcomeInserted),
		duplicates:     m.batches.WithLabelValues(label, outcomeDuplicate),
		deadLettered:   m.batches.WithLabelValues(label, outcomeDeadLetter),
		rows:           m.rows.WithLabelValues(label),
		retries:        m.retries.WithLabelValues(label),
		deadLetters:    m.deadLetters.WithLabelValues(label),
		insertDuration: m.insertDuration.WithLabelValues(label),
		batchRows:      m.batchRows.WithLabelValues(label),
		batchBytes:     m.batchBytes.WithLabelValues(label),
		watermark:      m.watermark.WithLabelValues(label),
		pending:        m.pending.WithLabelValues(label),
		ackPending:     m.ackPending.WithLabelValues(label),
		resets:         m.resets.WithLabelValues(label),
		guesses:        m.guesses.WithLabelValues(label),
		endToEnd:       m.endToEnd,
	}
}

// observeEndToEnd records the latency of every row at once after an
// insert. Rows of one request share received_at, so runs of equal values
// reuse one computed duration.
func (m shardMetrics) observeEndToEnd(receivedAt []int64, now time.Time) {
	nowUS := now.UnixMicro()
	var prev int64 = -1
	var d float64
	for _, us := range receivedAt {
		if us != prev {
			prev = us
			d = float64(nowUS-us) / 1e6
			if d < 0 {
				d = 0
			}
		}
		m.endToEnd.Observe(d)
	}
}
