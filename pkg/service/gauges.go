package service

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/streams"
)

// registerReady exports surge_<service>_ready, read from the admin's
// checks at each scrape, so an alert sees a service that is up (its
// /metrics answers) but cannot do its work.
func registerReady(reg prometheus.Registerer, service string, admin *Admin) {
	promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "surge_" + service + "_ready",
		Help: "1 while the service is ready (/readyz answers 200), 0 while a readiness check fails (/readyz names it).",
	}, func() float64 {
		if len(admin.NotReadyReasons()) == 0 {
			return 1
		}
		return 0
	})
}

// streamGauges are what a service reports of every Surge stream, read from
// JetStream every streamStatsEvery. Every service reports every stream, so
// the figures outlive any one of them; the job label says which read it.
type streamGauges struct {
	bytes, maxBytes, messages *prometheus.GaugeVec
}

// streamStatsEvery is how often the stream gauges are refreshed: about
// one scrape interval.
const streamStatsEvery = 5 * time.Second

func newStreamGauges(reg prometheus.Registerer) *streamGauges {
	f := promauto.With(reg)
	return &streamGauges{
		bytes: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_stream_bytes",
			Help: "Bytes stored in the stream, by stream, as JetStream last reported them.",
		}, []string{"stream"}),
		maxBytes: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_stream_max_bytes",
			Help: "The stream's byte limit (streams.max_bytes), by stream: a full stream refuses publishes.",
		}, []string{"stream"}),
		messages: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "surge_stream_messages",
			Help: "Messages stored in the stream, by stream, as JetStream last reported them.",
		}, []string{"stream"}),
	}
}

// poll refreshes the gauges until ctx ends. A stream that does not answer
// keeps its last figures (the NATS readiness check reports the outage).
func (g *streamGauges) poll(ctx context.Context, js jetstream.JetStream, c streams.Config, log *zap.Logger) {
	t := time.NewTicker(streamStatsEvery)
	defer t.Stop()
	for {
		for _, sc := range streams.Definitions(c) {
			if err := g.read(ctx, js, sc.Name); err != nil && ctx.Err() == nil {
				log.Debug("stream gauges", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *streamGauges) read(ctx context.Context, js jetstream.JetStream, name string) error {
	ictx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
	defer cancel()
	st, err := js.Stream(ictx, name)
	if err != nil {
		return fmt.Errorf("stream %s: %w", name, err)
	}
	info := st.CachedInfo()
	g.bytes.WithLabelValues(name).Set(float64(info.State.Bytes))
	g.messages.WithLabelValues(name).Set(float64(info.State.Msgs))
	if info.Config.MaxBytes > 0 {
		g.maxBytes.WithLabelValues(name).Set(float64(info.Config.MaxBytes))
	}
	return nil
}
