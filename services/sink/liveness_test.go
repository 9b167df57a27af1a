package sink

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// countingMsg is a real BATCHES message that signals each InProgress.
type countingMsg struct {
	jetstream.Msg
	progressed chan struct{}
}

func (m *countingMsg) InProgress() error {
	err := m.Msg.InProgress()
	select {
	case m.progressed <- struct{}{}:
	default:
	}
	return err
}

func (m *countingMsg) progressedC() <-chan struct{} { return m.progressed }

// TestKeepaliveHoldsABatchPastItsAckWait: on a real JetStream consumer
// with the sink's configuration, an insert lasting three AckWaits does not
// get its batch handed out again: a pull waiting all along receives
// nothing, and the batch is delivered once and acked.
func TestKeepaliveHoldsABatchPastItsAckWait(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	cfg := DefaultConfig()
	cfg.AckWait = MinAckWait
	cons, err := js.CreateOrUpdateConsumer(ctx, streams.Batches, cfg.ConsumerConfig(0))
	require.NoError(t, err)
	b := testBatch(0, 5, 7)
	msg := nats.NewMsg(streams.BatchesSubject(0))
	msg.Data = batch.Encode(b)
	_, err = js.PublishMsg(ctx, msg)
	require.NoError(t, err)

	fetched, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	var held []jetstream.Msg
	for m := range fetched.Messages() {
		held = append(held, m)
	}
	require.NoError(t, fetched.Error())
	require.Len(t, held, 1)

	// A second pull waits while the batch is held: a redelivery would go to it.
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch, err := cons.Fetch(1, jetstream.FetchContext(watchCtx))
	require.NoError(t, err)

	st := newFakeStore(seqs(1, 4)...)
	l := newTestLoop(t, st, &fakePublisher{})
	l.alive.Every = cfg.KeepaliveEvery()
	l.insertTimeout = 30 * time.Second
	m := &countingMsg{Msg: held[0], progressed: make(chan struct{}, 1)}
	// Nine keepalives of AckWait/3: the insert lasts three AckWaits.
	st.insertHook = waitProgress(m, 9)

	l.handle(ctx, m)
	stopWatch()
	redelivered := 0
	for range watch.Messages() {
		redelivered++
	}

	require.Equal(t, []string{"present 5-7", "insert [5 6 7]"}, st.calls)
	require.Equal(t, 1.0, testutil.ToFloat64(l.m.inserted))
	require.Zero(t, redelivered, "the batch was handed out again while the sink worked on it")
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.Delivered.Consumer, "delivered once")
	require.Zero(t, info.NumRedelivered)
	require.Zero(t, info.NumAckPending)
	require.Zero(t, info.NumPending)
	require.Equal(t, uint64(1), info.AckFloor.Stream, "acked")
}
