package ingest

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Rejection reasons, the values of the reason label. The set is fixed so
// the label's cardinality stays bounded.
const (
	reasonNotFound        = "not_found"
	reasonMethod          = "method_not_allowed"
	reasonUnauthorized    = "unauthorized"
	reasonOverloaded      = "overloaded"
	reasonMediaType       = "unsupported_media_type"
	reasonBadRequest      = "bad_request"
	reasonBadGzip         = "bad_gzip"
	reasonBodyTooLarge    = "body_too_large"
	reasonEventTooLarge   = "event_too_large"
	reasonTooManyEvents   = "too_many_events"
	reasonMessageTooLarge = "message_too_large"
	reasonEmpty           = "empty"
	reasonInvalid         = "invalid"
	reasonTimeout         = "timeout"
	reasonUnavailable     = "unavailable"
)

type metrics struct {
	eventsAccepted   prometheus.Counter
	eventsRejected   *prometheus.CounterVec
	requestsRejected *prometheus.CounterVec
	requests         *prometheus.CounterVec
	requestDuration  prometheus.Histogram
	publishDuration  prometheus.Histogram
	inFlight         prometheus.Gauge
	quotaRefused     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		eventsAccepted: f.NewCounter(prometheus.CounterOpts{
			Name: "surge_ingest_events_accepted_total",
			Help: "Events acknowledged by JetStream and answered with 202.",
		}),
		eventsRejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_ingest_events_rejected_total",
			Help: "Events of rejected requests whose events were counted, by reason.",
		}, []string{"reason"}),
		requestsRejected: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_ingest_requests_rejected_total",
			Help: "Rejected requests, by reason, including those rejected before their events were read.",
		}, []string{"reason"}),
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_ingest_requests_total",
			Help: "HTTP requests by response status code.",
		}, []string{"code"}),
		requestDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "surge_ingest_request_duration_seconds",
			Help:    "Time from request start to the answer.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		publishDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "surge_ingest_publish_duration_seconds",
			Help:    "Time from publish to JetStream's ack (or failure).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		inFlight: f.NewGauge(prometheus.GaugeOpts{
			Name: "surge_ingest_in_flight",
			Help: "Requests holding an in-flight slot.",
		}),
		// The tenant label is bounded by the tenants the API keys name:
		// only authenticated requests meet a quota.
		quotaRefused: f.NewCounterVec(prometheus.CounterOpts{
			Name: "surge_ingest_quota_refused_total",
			Help: "Requests refused with 429 by their tenant's quota, by tenant and quota (events, bytes).",
		}, []string{"tenant", "reason"}),
	}
}
