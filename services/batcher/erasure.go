package batcher

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/pkg/event"
)

// erased drops the events of users an erasure request suppressed from the
// batches this batcher cuts: the events already in INGEST or EVENTS when
// the request came. It reads the suppression list kept in memory by an
// erasure.Watcher.
//
// Dropping at take never changes a batch that may be retried: a batch is
// encoded once and a publish retry sends the same bytes. A batch cut
// again after a crash (from the last batch in BATCHES on) may come out
// without events an earlier cut held; the earlier version, when it got
// into BATCHES, keeps its id and JetStream drops the new one as a
// duplicate, and the sink leaves out what ClickHouse holds of an
// overlapping batch, as for any batch cut differently. Rows of the user
// that land that way were in EVENTS before the request's landing marks,
// so the eraser's deletion, which waits for the sink to land past them,
// removes them.
type erased struct {
	w       *erasure.Watcher
	dropped prometheus.Counter
}

func newErased(js jetstream.JetStream, replicas int, reg prometheus.Registerer, log *zap.Logger) *erased {
	return &erased{
		w: erasure.NewWatcher(js, replicas, log),
		dropped: promauto.With(reg).NewCounter(prometheus.CounterOpts{
			Name: "surge_batcher_erased_events_dropped_total",
			Help: "Events of users suppressed by an erasure request, dropped when batched.",
		}),
	}
}

// run watches the suppression list until ctx ends.
func (e *erased) run(ctx context.Context) { e.w.Run(ctx) }

// drop removes the suppressed events. Until the list was read once it
// waits, so a batcher that just started lets nothing of a suppressed
// user through. A nil e drops nothing.
func (e *erased) drop(ctx context.Context, events []event.Event) []event.Event {
	if e == nil || len(events) == 0 {
		return events
	}
	if e.w.Wait(ctx) != nil {
		return events // shutting down: the batch in hand is published as it is
	}
	kept, n := e.w.Drop(events)
	if n > 0 {
		e.dropped.Add(float64(n))
	}
	return kept
}
