package partitioner

import (
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/problems"
)

// erased refuses the events of users an erasure request suppressed that
// NATS and MQTT producers publish (ingest refuses those of HTTP; the
// batcher drops whatever is already in flight). It reads the list kept in
// memory by an erasure.Watcher: no I/O per message.
type erased struct {
	w       *erasure.Watcher
	dropped prometheus.Counter
}

func newErased(js jetstream.JetStream, replicas int, reg prometheus.Registerer, s *Service) *erased {
	return &erased{
		w: erasure.NewWatcher(js, replicas, s.logger),
		dropped: promauto.With(reg).NewCounter(prometheus.CounterOpts{
			Name: "surge_partitioner_erased_events_dropped_total",
			Help: "Events of users suppressed by an erasure request that producers published, dropped.",
		}),
	}
}

// dropErased removes the suppressed events of a producer message of
// tenant, counts them and records them as the tenant's erased_user
// problem. Without a watcher (tests) it drops nothing.
func (s *Service) dropErased(tenant string, events []event.Event) []event.Event {
	e := s.erased
	if e == nil {
		return events
	}
	kept, n := e.w.Drop(events)
	if n > 0 {
		e.dropped.Add(float64(n))
		s.host.Problems.AddN(tenant, problems.ReasonErasedUser, "user_id", n, problems.Sample{
			Detail: "the user's data was erased on request; new events of the user are dropped"})
	}
	return kept
}
