package batch_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

// sampleEvents makes n events shaped like real traffic, the same for the
// same seed: ULID-like ids, a few tenants and types, many users, rising
// timestamps and JSON properties of varied length.
func sampleEvents(seed uint64, n int) []event.Event {
	r := rand.New(rand.NewPCG(seed, 1))
	types := []string{"page_view", "click", "add_to_cart", "purchase", "signup", "login", "search", "scroll"}
	const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	out := make([]event.Event, n)
	for i := range out {
		var id [26]byte
		for j := range id {
			id[j] = alphabet[r.IntN(len(alphabet))]
		}
		ts := at.Add(time.Duration(i)*time.Millisecond + time.Duration(r.IntN(5000))*time.Microsecond)
		props := fmt.Sprintf(`{"page":"/products/%d","ref":"%s","price":%d.%02d,"session":"s-%d"}`,
			r.IntN(5000), types[r.IntN(len(types))], r.IntN(500), r.IntN(100), r.IntN(1_000_000))
		if r.IntN(10) == 0 {
			props = `{"note":"` + strings.Repeat("x", r.IntN(400)) + `"}`
		}
		out[i] = event.Event{
			EventID:    string(id[:]),
			Tenant:     fmt.Sprintf("tenant-%d", r.IntN(5)),
			UserID:     fmt.Sprintf("user-%d", r.IntN(100_000)),
			Type:       types[r.IntN(len(types))],
			TS:         ts.Truncate(time.Microsecond),
			ReceivedAt: ts.Add(time.Duration(r.IntN(2000)) * time.Millisecond).Truncate(time.Microsecond),
			Properties: props,
		}
	}
	return out
}

// sampleBatch makes a batch of rows events in messages of perMsg events,
// with EVENTS sequences starting at 1000.
func sampleBatch(shard, rows, perMsg int) *batch.Batch {
	events := sampleEvents(uint64(rows), rows)
	b := &batch.Batch{Shard: shard}
	seq := uint64(1000)
	for i := 0; i < rows; i += perMsg {
		b.Append(seq, events[i:min(i+perMsg, rows)])
		seq++
	}
	return b
}

// eventBytes is the Size of the batch's events, the bytes the policy counts.
func eventBytes(b *batch.Batch) int {
	n := 0
	for i := range b.Len() {
		n += len(b.EventID[i]) + len(b.Tenant[i]) + len(b.UserID[i]) + len(b.Type[i]) + len(b.Properties[i]) + 16
	}
	return n
}
