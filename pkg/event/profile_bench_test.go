package event_test

import (
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/schema"
)

// BenchmarkParseProfiles parses a request of 500 events as ingest does,
// with the bench's properties: its default three keys and each generated
// profile.
func BenchmarkParseProfiles(b *testing.B) {
	p := &event.Parser{Limits: event.Limits{MaxEvents: 10000, MaxEventBytes: 1 << 20}, NewID: func(time.Time) string { return "01J00000000000000000000000" }}
	for _, profile := range []string{"default", "p20", "sparse200", "nested", "hostile"} {
		rng := rand.New(rand.NewPCG(1, 2))
		body := []byte{'['}
		for i := range 500 {
			if i > 0 {
				body = append(body, ',')
			}
			props := `{"path":"/p/` + strconv.Itoa(i%50) + `","ref":"campaign-7","ms":` + strconv.Itoa(i*7) + `}`
			if profile != "default" {
				props = schema.Profile(profile, rng, i)
			}
			body = append(body, `{"user_id":"user-`+strconv.Itoa(i)+`","type":"page_view","ts":"2026-12-07T10:00:00.123Z","properties":`+props+`}`...)
		}
		body = append(body, ']')
		b.Run(profile, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.ParseBytes(body, event.FormatJSON, "t"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*500), "ns/event")
		})
	}
}
