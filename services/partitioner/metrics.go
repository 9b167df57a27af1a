package partitioner

import (
	"cmp"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Outcomes of an INGEST message, the label of surge_partitioner_messages_total.
const (
	outcomeAcked      = "acked"       // every group published and PubAcked, input acked
	outcomeNaked      = "naked"       // a publish failed, input redelivered later
	outcomeDeadLetter = "dead_letter" // undecodable or not JSON, dead-lettered whole and terminated
)

type metrics struct {
	messages        *prometheus.CounterVec
	events          []prometheus.Counter // by shard
	publishDuration prometheus.Histogram
	consumerPending prometheus.Gauge
	ackPending      prometheus.Gauge
	tenantPending   *prometheus.GaugeVec
	deadLetters     prometheus.Counter
	invalid         prometheus.Counter
	redelivered     prometheus.Counter
	heldBack        prometheus.Gauge
	heldBackSeconds prometheus.Counter
	quotaWaits      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, shards int) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_partitioner_messages_total",
			Help: "INGEST messages handled, by outcome (acked, naked, dead_letter).",
		}, []string{"outcome"}),
		publishDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "surge_partitioner_publish_duration_seconds",
			Help:    "Time from publishing an INGEST message's shard groups to their last PubAck.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		consumerPending: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_partitioner_consumer_pending",
			Help: "INGEST messages not yet delivered to a partitioner, summed over the tenants' consumers.",
		}),
		ackPending: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_partitioner_consumer_ack_pending",
			Help: "INGEST messages delivered to a partitioner and not yet acked, summed over the tenants' consumers.",
		}),
		tenantPending: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_partitioner_tenant_pending",
			Help: "INGEST messages of a tenant not yet delivered or not yet acked, for the tenants with the most (at most 10, so the series stay few).",
		}, []string{"tenant"}),
		quotaWaits: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_partitioner_quota_waits_total",
			Help: "Times a tenant's turns waited for its quota (events or bytes per second): its events wait in INGEST and reach the shards at its quota.",
		}, []string{"tenant"}),
		deadLetters: f.NewCounter(prometheus.CounterOpts{
			Name: "surge_partitioner_dead_letters_total",
			Help: "INGEST messages published to DEAD_LETTER whole (undecodable, or a producer message that is not JSON): the count of surge_partitioner_messages_total{outcome=\"dead_letter\"}, kept under its own name for the alerts and dashboards that read it.",
		}),
		redelivered: f.NewCounter(prometheus.CounterOpts{
			Name: "surge_partitioner_redeliveries_total",
			Help: "INGEST messages received again after an earlier delivery (naked, an ack lost, or held by a partitioner that died or was cut off).",
		}),
		invalid: f.NewCounter(prometheus.CounterOpts{
			Name: "surge_partitioner_events_invalid_total",
			Help: "Events of NATS and MQTT producers that failed validation, each published to DEAD_LETTER with its reasons.",
		}),
		heldBack: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_partitioner_held_back",
			Help: "1 while the partitioner fetches nothing of the tenants with a backlog in INGEST (more than fetch_batch messages) because BATCHES holds more than max_batches_backlog batches (the sinks are behind), else 0.",
		}),
		heldBackSeconds: f.NewCounter(prometheus.CounterOpts{
			Name: "surge_partitioner_held_back_seconds_total",
			Help: "Seconds the partitioner held back from fetching INGEST while the sinks were behind (surge_partitioner_held_back at 1).",
		}),
	}
	eventsVec := f.NewCounterVec(prometheus.CounterOpts{
		Name: "surge_partitioner_events_total",
		Help: "Events published to EVENTS and acked, by shard.",
	}, []string{"shard"})
	m.events = make([]prometheus.Counter, shards)
	for k := range m.events {
		m.events[k] = eventsVec.WithLabelValues(strconv.Itoa(k))
	}
	for _, o := range []string{outcomeAcked, outcomeNaked, outcomeDeadLetter} {
		m.messages.WithLabelValues(o)
	}
	return m
}

// tenantSeries is the most tenants surge_partitioner_tenant_pending shows.
const tenantSeries = 10

// setLag sets the lag gauges: the sums, and the tenants with the most.
func (m *metrics) setLag(l lag) {
	m.consumerPending.Set(float64(l.pending))
	m.ackPending.Set(float64(l.ackPending))
	slices.SortFunc(l.tenants, func(a, b tenantLag) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.tenant, b.tenant)) })
	m.tenantPending.Reset()
	for _, t := range l.tenants[:min(len(l.tenants), tenantSeries)] {
		m.tenantPending.WithLabelValues(t.tenant).Set(float64(t.n))
	}
}
