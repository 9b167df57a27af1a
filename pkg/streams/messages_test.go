package streams

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

func TestEventsAndBatchMsgs(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
	traced := trace.ContextWithSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		TraceFlags: trace.FlagsSampled,
	}))
	const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	ts := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	events := []event.Event{
		{EventID: "e1", Tenant: "acme", UserID: "u1", Type: "click", TS: ts, ReceivedAt: ts, Properties: `{"a":1}`},
		{EventID: "e2", Tenant: "acme", UserID: "u2", Type: "view", TS: ts, ReceivedAt: ts, Properties: `{}`},
	}

	m := EventsMsg{Shard: 5, IngestSeq: 1234, Events: events}.Msg(traced)
	require.Equal(t, "events.shard.5", m.Subject)
	require.Equal(t, nats.Header{jetstream.MsgIDHeader: {"1234:5"}, HeaderRows: {"2"}, "traceparent": {traceparent}}, m.Header)
	require.Equal(t, event.AppendEncoded(nil, events), m.Data)

	b := batch.NewBuilder(5, batch.DefaultPolicy())
	b.Add(40, events[:1], ts)
	b.Add(41, events[1:], ts)
	cut := b.Cut()
	bm := BatchMsg{Batch: cut}.Msg(t.Context())
	require.Equal(t, "batches.shard.5", bm.Subject)
	require.Equal(t, nats.Header{
		jetstream.MsgIDHeader: {cut.ID()}, HeaderBatchID: {cut.ID()},
		HeaderFirstSeq: {"40"}, HeaderLastSeq: {"41"}, HeaderRows: {"2"},
	}, bm.Header)
	require.Equal(t, batch.Encode(cut), bm.Data, "encoded when not given")
	given := []byte("already encoded")
	require.Equal(t, given, BatchMsg{Batch: cut, Data: given}.Msg(traced).Data)
	require.Equal(t, traceparent, BatchMsg{Batch: cut, Data: given}.Msg(traced).Header.Get("traceparent"))
}
