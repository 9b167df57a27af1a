package streams

import (
	"context"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/telemetry"
)

// IngestInvalidSubject is where ingest dead-letters the items of a
// request it stores in part (a Segment batch's invalid messages).
func IngestInvalidSubject(tenant string) string { return "deadletter.ingest.invalid." + tenant }

// IngestMsg is one request's events on their way to INGEST. Every ingest
// path builds its message with it, so the partitioner reads one form
// whatever the request's protocol.
type IngestMsg struct {
	// Tenant owns the events; it is the subject's last token, not a header.
	Tenant string
	// ID is the Nats-Msg-Id, by which JetStream drops a retry within its
	// duplicate window; "" sends none, and every publish is stored.
	ID string
	// Events are the request's events, in the order they were sent.
	Events []event.Event
}

// Msg is the message to publish: on IngestSubject(Tenant), the events
// encoded with event.AppendEncoded, their count in HeaderRows, ID as
// Nats-Msg-Id when set, and the trace context of ctx (traceparent).
func (m IngestMsg) Msg(ctx context.Context) *nats.Msg {
	estimate := 16
	for i := range m.Events {
		estimate += m.Events[i].Size()
	}
	msg := nats.NewMsg(IngestSubject(m.Tenant))
	msg.Data = event.AppendEncoded(make([]byte, 0, estimate), m.Events)
	msg.Header.Set(HeaderRows, strconv.Itoa(len(m.Events)))
	if m.ID != "" {
		msg.Header.Set(jetstream.MsgIDHeader, m.ID)
	}
	telemetry.Inject(ctx, msg.Header)
	return msg
}
