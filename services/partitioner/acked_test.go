package partitioner

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// requireIngestState checks INGEST's message count and a consumer's ack
// floor and pending counts, within a bound: the consumer counts a message
// a moment after the stream stores it.
func requireIngestState(t *testing.T, js jetstream.JetStream, consumer string, msgs, ackFloor, pending uint64) {
	t.Helper()
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		st, err := js.Stream(t.Context(), streams.Ingest)
		if !assert.NoError(c, err) {
			return
		}
		info, err := st.Info(t.Context())
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, msgs, info.State.Msgs, "INGEST messages")
		cons, err := st.Consumer(t.Context(), consumer)
		if !assert.NoError(c, err) {
			return
		}
		ci, err := cons.Info(t.Context())
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, ackFloor, ci.AckFloor.Stream, "ack floor")
		assert.Equal(c, pending, ci.NumPending, "pending")
		assert.Zero(c, ci.NumAckPending, "ack pending")
	}, 10*time.Second, 5*time.Millisecond)
}

// legacyConfig is the shared consumer of older partitioners.
func legacyConfig(cfg Config) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       LegacyConsumerName,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: cfg.MaxAckPending,
	}
}

// publishRequest publishes one request of tenant with one event.
func publishRequest(t *testing.T, js jetstream.JetStream, tenant, id string) ingestReq {
	t.Helper()
	at := time.UnixMicro(1_700_000_000_000_000).UTC()
	events := []event.Event{{EventID: id, Tenant: tenant, UserID: "u-" + id, Type: "click", TS: at, ReceivedAt: at, Properties: "{}"}}
	ack, err := js.Publish(t.Context(), streams.IngestSubject(tenant), event.AppendEncoded(nil, events))
	require.NoError(t, err)
	return ingestReq{seq: ack.Sequence, events: events}
}

// A server killed between a work-queue ack and the removal comes back
// holding messages the consumer has acked. Resetting the consumer past
// them leaves INGEST in that same state: ack floor past them, nothing
// pending. Here the consumer is the one older partitioners shared: the
// partitioner removes exactly those at start, deletes the shared consumer
// and partitions the rest through the tenants' consumers.
func TestStartRemovesAckedMessages(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())

	const acked = 7
	publishInputs(t, js, acked, 4)
	_, err := js.CreateOrUpdateConsumer(t.Context(), streams.Ingest, legacyConfig(cfg))
	require.NoError(t, err)
	_, err = js.ResetConsumerToSequence(t.Context(), streams.Ingest, LegacyConsumerName, acked+1)
	require.NoError(t, err)
	requireIngestState(t, js, LegacyConsumerName, acked, acked, 0)

	later := publishInputs(t, js, 3, 4)
	requireIngestState(t, js, LegacyConsumerName, acked+3, acked, 3)

	core, logs := observer.New(zapcore.InfoLevel)
	p := startWith(t, cfg, zap.New(core))
	waitDrained(t, js)

	removed := logs.FilterMessage("removed acked messages").All()
	require.Len(t, removed, 1)
	require.Equal(t, map[string]any{"stream": streams.Ingest, "messages": uint64(acked)}, removed[0].ContextMap())
	require.Empty(t, logs.FilterMessage("remove acked messages").All())
	require.Equal(t, 1, logs.FilterMessage("deleted the shared consumer of older partitioners").Len())
	_, err = js.Consumer(t.Context(), streams.Ingest, LegacyConsumerName)
	require.ErrorIs(t, err, jetstream.ErrConsumerNotFound)
	// Only the later requests reached EVENTS, once each.
	requireExactlyOnce(t, later, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 3 }, 5*time.Second, 10*time.Millisecond)
}

// A tenant's consumer left acked messages behind: the start removes them
// among its tenant's subjects only, not another tenant's message that
// sits between them in the stream.
func TestStartRemovesAckedMessagesOfEachTenant(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())

	publishRequest(t, js, "acme", "a1")
	other := publishRequest(t, js, "globex", "g1")
	last := publishRequest(t, js, "acme", "a2")
	_, err := js.CreateOrUpdateConsumer(t.Context(), streams.Ingest, cfg.consumerConfig("acme"))
	require.NoError(t, err)
	_, err = js.ResetConsumerToSequence(t.Context(), streams.Ingest, ConsumerName("acme"), last.seq+1)
	require.NoError(t, err)
	requireIngestState(t, js, ConsumerName("acme"), 3, last.seq, 0)
	later := publishRequest(t, js, "acme", "a3")

	core, logs := observer.New(zapcore.InfoLevel)
	p := startWith(t, cfg, zap.New(core))
	waitDrained(t, js)

	removed := logs.FilterMessage("removed acked messages").All()
	require.Len(t, removed, 1)
	require.Equal(t, map[string]any{"stream": streams.Ingest, "messages": uint64(2)}, removed[0].ContextMap())
	requireExactlyOnce(t, map[uint64]ingestReq{other.seq: other, later.seq: later}, readEvents(t, js))
	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 2 }, 5*time.Second, 10*time.Millisecond)
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
