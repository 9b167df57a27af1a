package streams

import (
	"context"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/telemetry"
)

// EventsMsg is one shard's group of an INGEST message's events, on its way
// to EVENTS. The partitioner builds every EVENTS message with it.
type EventsMsg struct {
	// Shard is the group's shard: the subject is EventsSubject(Shard).
	Shard int
	// IngestSeq is the INGEST sequence of the message the events came in:
	// with Shard it makes the Nats-Msg-Id ("<seq>:<shard>"), so the
	// groups of a redelivered request are dropped as duplicates.
	IngestSeq uint64
	Events    []event.Event
}

// Msg is the message to publish: the events encoded with
// event.AppendEncoded, their count in HeaderRows, the Nats-Msg-Id, and the
// trace context of ctx (the publish span the batcher links its batch to).
func (m EventsMsg) Msg(ctx context.Context) *nats.Msg {
	size := 2
	for i := range m.Events {
		size += m.Events[i].Size() + 16
	}
	msg := nats.NewMsg(EventsSubject(m.Shard))
	msg.Data = event.AppendEncoded(make([]byte, 0, size), m.Events)
	msg.Header.Set(jetstream.MsgIDHeader, strconv.FormatUint(m.IngestSeq, 10)+":"+strconv.Itoa(m.Shard))
	msg.Header.Set(HeaderRows, strconv.Itoa(len(m.Events)))
	telemetry.Inject(ctx, msg.Header)
	return msg
}

// BatchMsg is a cut batch on its way to BATCHES. The batcher builds every
// BATCHES message with it.
type BatchMsg struct {
	Batch *batch.Batch
	// Data is Batch encoded (batch.Encode); Msg encodes it when nil.
	Data []byte
}

// Msg is the message to publish on BatchesSubject(Batch.Shard): the
// encoded batch, its id as Nats-Msg-Id and HeaderBatchID, its EVENTS
// sequence range (HeaderFirstSeq, HeaderLastSeq), its rows (HeaderRows),
// and the trace context of ctx (the batch span).
func (m BatchMsg) Msg(ctx context.Context) *nats.Msg {
	b := m.Batch
	data := m.Data
	if data == nil {
		data = batch.Encode(b)
	}
	id := b.ID()
	msg := nats.NewMsg(BatchesSubject(b.Shard))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set(HeaderBatchID, id)
	msg.Header.Set(HeaderFirstSeq, strconv.FormatUint(b.FirstSeq, 10))
	msg.Header.Set(HeaderLastSeq, strconv.FormatUint(b.LastSeq, 10))
	msg.Header.Set(HeaderRows, strconv.Itoa(b.Len()))
	telemetry.Inject(ctx, msg.Header)
	return msg
}
