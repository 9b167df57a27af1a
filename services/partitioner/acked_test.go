package partitioner

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// requireIngestState checks INGEST's message count and the shared
// consumer's ack floor and pending counts.
func requireIngestState(t *testing.T, js jetstream.JetStream, msgs, ackFloor, pending uint64) {
	t.Helper()
	st, err := js.Stream(t.Context(), streams.Ingest)
	require.NoError(t, err)
	info, err := st.Info(t.Context())
	require.NoError(t, err)
	require.Equal(t, msgs, info.State.Msgs, "INGEST messages")
	cons, err := st.Consumer(t.Context(), ConsumerName)
	require.NoError(t, err)
	ci, err := cons.Info(t.Context())
	require.NoError(t, err)
	require.Equal(t, ackFloor, ci.AckFloor.Stream, "ack floor")
	require.Equal(t, pending, ci.NumPending, "pending")
	require.Zero(t, ci.NumAckPending, "ack pending")
}

// A server killed between a work-queue ack and the removal comes back
// holding messages the consumer has acked. Resetting the consumer past
// them leaves INGEST in that same state: ack floor past them, nothing
// pending. The partitioner removes exactly those at start and partitions
// the rest.
func TestStartRemovesAckedMessages(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())

	const acked = 7
	publishInputs(t, js, acked, 4)
	_, err := js.CreateOrUpdateConsumer(t.Context(), streams.Ingest, cfg.consumerConfig())
	require.NoError(t, err)
	_, err = js.ResetConsumerToSequence(t.Context(), streams.Ingest, ConsumerName, acked+1)
	require.NoError(t, err)
	requireIngestState(t, js, acked, acked, 0)

	later := publishInputs(t, js, 3, 4)
	requireIngestState(t, js, acked+3, acked, 3)

	core, logs := observer.New(zapcore.InfoLevel)
	p := startWith(t, cfg, zap.New(core))
	waitDrained(t, js)

	removed := logs.FilterMessage("removed acked messages").All()
	require.Len(t, removed, 1)
	require.Equal(t, map[string]any{"stream": streams.Ingest, "messages": uint64(acked)}, removed[0].ContextMap())
	require.Empty(t, logs.FilterMessage("remove acked messages").All())
	// Only the later requests reached EVENTS, once each.
	requireExactlyOnce(t, later, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 3 }, 5*time.Second, 10*time.Millisecond)
}

// Where nothing acked is left behind, the start-up removal removes
// nothing and says nothing.
func TestStartRemovesNothingWhenNothingIsLeft(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	inputs := publishInputs(t, js, 5, 4)

	core, logs := observer.New(zapcore.InfoLevel)
	startWith(t, testConfig(ns.ClientURL()), zap.New(core))
	waitDrained(t, js)

	require.Empty(t, logs.FilterMessage("removed acked messages").All())
	require.Empty(t, logs.FilterMessage("remove acked messages").All())
	requireExactlyOnce(t, inputs, readEvents(t, js))
}
