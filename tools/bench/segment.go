package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/surge-events/surge/tools/stack"
)

// `surge bench --via segment` sends the throughput phase's load a second
// time through Segment's API (POST /v1/batch), shaped as the analytics
// SDKs shape it, and prints both rates side by side.

// segmentLoad turns the generator's events into Segment batches: one
// track per event with what analytics-node adds (messageId, timestamp,
// context.library) and the batch's sentAt. Each request gets fresh
// messageIds, stamped into a fixed-width slot of a copy of the body, so
// repeating a body repeats no message: ingest would drop it as a retry.
type segmentLoad struct {
	bodies [][]byte
	slots  [][]int // offsets of each body's request-number slots
	next   atomic.Uint64
}

// segmentSlot is the width of the request number in a messageId.
const segmentSlot = 10

func newSegmentLoad(gen *generator) (*segmentLoad, error) {
	l := &segmentLoad{}
	placeholder := bytes.Repeat([]byte("#"), segmentSlot)
	for _, body := range gen.bodies {
		var events []struct {
			UserID     string          `json:"user_id"`
			Type       string          `json:"type"`
			Properties json.RawMessage `json:"properties"`
		}
		if err := json.Unmarshal(body, &events); err != nil {
			return nil, fmt.Errorf("segment load: %w", err)
		}
		var b bytes.Buffer
		b.WriteString(`{"batch":[`)
		var slots []int
		for i, e := range events {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`{"type":"track","messageId":"`)
			slots = append(slots, b.Len())
			b.Write(placeholder)
			fmt.Fprintf(&b, `-%d","userId":%q,"event":%q,"properties":%s,"timestamp":"2026-05-01T12:00:00.000Z",`+
				`"context":{"library":{"name":"@segment/analytics-node","version":"3.1.0"}}}`, i, e.UserID, e.Type, e.Properties)
		}
		b.WriteString(`],"sentAt":"2026-05-01T12:00:00.100Z"}`)
		l.bodies = append(l.bodies, b.Bytes())
		l.slots = append(l.slots, slots)
	}
	return l, nil
}

// body returns a copy of the next body with this request's number in
// every messageId.
func (l *segmentLoad) body() []byte {
	n := l.next.Add(1)
	i := n % uint64(len(l.bodies))
	b := bytes.Clone(l.bodies[i])
	num := fmt.Appendf(nil, "%0*d", segmentSlot, n)
	for _, at := range l.slots[i] {
		copy(b[at:at+segmentSlot], num)
	}
	return b
}

// postSegment sends one batch; a nil error means 200 {"success":true}.
func postSegment(ctx context.Context, url string, body []byte) error {
	return postAs(ctx, url+"/v1/batch", http.StatusOK, body)
}

// segmentReport puts the two throughput phases side by side.
func segmentReport(f benchFlags, events, batch throughputResult) string {
	return fmt.Sprintf(`
Segment API vs Surge's own (the same %d events, %d per request, %d clients, one run)
  POST /v1/events  accepted %10.0f events/s   inserted %10.0f events/s
  POST /v1/batch   accepted %10.0f events/s   inserted %10.0f events/s   (%.0f%% of /v1/events accepted)
`, f.events, f.perRequest, f.clients,
		events.accepted, events.inserted, batch.accepted, batch.inserted, 100*batch.accepted/events.accepted)
}

// throughputSegment is the throughput phase through POST /v1/batch.
func throughputSegment(ctx context.Context, st *stack.Stack, gen *generator, f benchFlags) (throughputResult, error) {
	load, err := newSegmentLoad(gen)
	if err != nil {
		return throughputResult{}, err
	}
	return throughputOf(ctx, []string{st.IngestURL}, stackInserted(st), gen, f,
		func(ctx context.Context, url string) error { return postSegment(ctx, url, load.body()) })
}
