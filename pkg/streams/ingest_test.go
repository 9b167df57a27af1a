package streams

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-events/surge/pkg/event"
)

func TestIngestMsg(t *testing.T) {
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	ts := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	events := []event.Event{
		{EventID: "e1", Tenant: "acme", UserID: "u1", Type: "click", TS: ts, ReceivedAt: ts, Properties: `{"a":1}`},
		{EventID: "e2", Tenant: "acme", UserID: "u2", Type: "view", TS: ts, ReceivedAt: ts, Properties: `{}`},
	}
	traced := trace.ContextWithSpanContext(t.Context(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c},
		SpanID:     trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31},
		TraceFlags: trace.FlagsSampled,
	}))
	tests := []struct {
		name   string
		msg    IngestMsg
		ctx    context.Context
		header nats.Header
	}{
		{
			name:   "with id and trace",
			msg:    IngestMsg{Tenant: "acme", ID: "acme:key-1", Events: events},
			ctx:    traced,
			header: nats.Header{HeaderRows: {"2"}, jetstream.MsgIDHeader: {"acme:key-1"}, "traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		},
		{
			name:   "no id, no trace",
			msg:    IngestMsg{Tenant: "acme", Events: events[:1]},
			ctx:    t.Context(),
			header: nats.Header{HeaderRows: {"1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.msg.Msg(tt.ctx)
			require.Equal(t, "ingest.acme", m.Subject)
			require.Equal(t, tt.header, m.Header)
			require.Equal(t, event.AppendEncoded(nil, tt.msg.Events), m.Data)
			decoded, err := event.Decode(m.Data)
			require.NoError(t, err)
			require.Equal(t, tt.msg.Events, decoded)
		})
	}
}

func TestIngestInvalidSubject(t *testing.T) {
	require.Equal(t, "deadletter.ingest.invalid.acme", IngestInvalidSubject("acme"))
}
