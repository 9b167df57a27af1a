package erasure

import (
	"fmt"
	"testing"
	"time"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/kvstate"
)

// BenchmarkDrop is the cost per event of the suppression check with
// 10,000 users suppressed in the events' tenant (the worst case: a tenant
// without suppressed users costs one map lookup per event).
func BenchmarkDrop(b *testing.B) {
	list := suppressed{"acme": {}}
	for i := range 10000 {
		list["acme"][userSum("acme", fmt.Sprintf("gone-%d", i))] = Suppression{Request: "r"}
	}
	w := &Watcher{state: kvstate.New(kvstate.Config[suppressed]{Empty: func() suppressed { return list }})}
	events := make([]event.Event, 1000)
	for i := range events {
		events[i] = event.Event{Tenant: "acme", UserID: fmt.Sprintf("user-%d", i), TS: time.Now()}
	}
	b.ResetTimer()
	for range b.N {
		if _, n := w.Drop(events); n != 0 {
			b.Fatal(n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(events)), "ns/event")
}
