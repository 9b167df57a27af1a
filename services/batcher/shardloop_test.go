package batcher

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
)

// The shard loop's cut, publish, purge and resume, against fakes of the
// three things it needs of JetStream (publisher, lastMsgReader,
// eventsStream): no NATS.

// fakeJS publishes into memory; the first fails publishes fail.
type fakeJS struct {
	mu        sync.Mutex
	fails     int
	published []*nats.Msg
}

func (f *fakeJS) PublishMsg(_ context.Context, msg *nats.Msg, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fails > 0 {
		f.fails--
		return nil, errors.New("nats: timeout")
	}
	f.published = append(f.published, msg)
	return &jetstream.PubAck{Stream: streams.Batches, Sequence: uint64(len(f.published))}, nil
}

func (f *fakeJS) OrderedConsumer(context.Context, string, jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	return nil, errors.New("not in these tests")
}

// fakeStream holds each subject's last message and records purges.
type fakeStream struct {
	last   map[string]*jetstream.RawStreamMsg
	err    error
	purges []jetstream.StreamPurgeRequest
}

func (f *fakeStream) GetLastMsgForSubject(_ context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	if f.err != nil {
		return nil, f.err
	}
	m, ok := f.last[subject]
	if !ok {
		return nil, jetstream.ErrMsgNotFound
	}
	return m, nil
}

func (f *fakeStream) Purge(_ context.Context, opts ...jetstream.StreamPurgeOpt) error {
	var req jetstream.StreamPurgeRequest
	for _, o := range opts {
		if err := o(&req); err != nil {
			return err
		}
	}
	f.purges = append(f.purges, req)
	return nil
}

// newFakeLoop is shard 3's loop of a batcher that never runs, over fakes.
func newFakeLoop(t *testing.T, purgeDelay time.Duration) (*shardLoop, *Service, *fakeJS, *fakeStream, *fakeStream) {
	t.Helper()
	cfg := testConfig("nats://127.0.0.1:1", 8, batch.DefaultPolicy())
	cfg.PurgeDelay = purgeDelay
	cfg.Retry = retry.Config{Initial: time.Millisecond, Max: time.Millisecond, Multiplier: 1}
	s, err := New(cfg, service.Deps{Logger: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(), TracerProvider: noop.NewTracerProvider()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	js, events, batches := &fakeJS{}, &fakeStream{}, &fakeStream{}
	l := &shardLoop{
		cfg: &s.cfg, tracer: s.host.Tracer, k: 3, js: js, events: events, batches: batches,
		subject: streams.EventsSubject(3), out: streams.BatchesSubject(3),
		builder: batch.NewBuilder(3, cfg.Policy), m: s.m.forShard(3), log: zaptest.NewLogger(t),
		wd: s.watchdogs.For("3"), holds: func() bool { return true },
	}
	return l, s, js, events, batches
}

func TestResumeStartsAfterTheLastBatch(t *testing.T) {
	header := func(kv ...string) nats.Header {
		h := nats.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	for _, tc := range []struct {
		name   string
		last   *jetstream.RawStreamMsg // nil: BATCHES has no batch of the shard
		next   uint64
		purged bool // the batched events are marked for a purge
	}{
		{name: "no batch yet: the subject's first message", next: 0},
		{name: "after the last batch", last: &jetstream.RawStreamMsg{Sequence: 9, Header: header(streams.HeaderLastSeq, "41", streams.HeaderBatchID, "3-40-41")}, next: 42, purged: true},
		{name: "a replayed dead letter says nothing", last: &jetstream.RawStreamMsg{Sequence: 9, Header: header(streams.HeaderLastSeq, "41", streams.HeaderReplay, "deadletter:7")}, next: 0},
		{name: "no valid last sequence", last: &jetstream.RawStreamMsg{Sequence: 9, Header: header(streams.HeaderLastSeq, "x")}, next: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _, _, events, batches := newFakeLoop(t, time.Hour)
			if tc.last != nil {
				batches.last = map[string]*jetstream.RawStreamMsg{streams.BatchesSubject(3): tc.last}
			}
			next, ok := l.resume(t.Context())
			require.True(t, ok)
			require.Equal(t, tc.next, next)
			require.Empty(t, events.purges, "the purge waits for PurgeDelay")
			if tc.purged {
				require.Equal(t, []purgeMark{{last: 41, at: l.unpurged[0].at}}, l.unpurged)
			} else {
				require.Empty(t, l.unpurged)
			}
		})
	}
}

func TestResumeRetriesUntilCanceled(t *testing.T) {
	l, _, _, _, batches := newFakeLoop(t, 0)
	batches.err = errors.New("nats: no responders")
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, ok := l.resume(ctx)
	require.False(t, ok, "only the end of ctx stops it")
}

func TestCutPublishesTheBatchThenPurgesItsEvents(t *testing.T) {
	l, s, js, events, _ := newFakeLoop(t, 0)
	js.fails = 2
	_, rows := newMessage(3, 2)
	l.builder.Add(5, rows[:1], time.Now())
	l.builder.Add(7, rows[1:], time.Now())
	l.cut(t.Context(), batch.CutAge)

	require.Nil(t, l.held)
	require.Len(t, js.published, 1)
	msg := js.published[0]
	b, err := batch.Decode(msg.Data)
	require.NoError(t, err)
	require.Equal(t, streams.BatchesSubject(3), msg.Subject)
	require.Equal(t, []uint64{5, 7}, b.Seq)
	require.Equal(t, b.ID(), msg.Header.Get(jetstream.MsgIDHeader))
	require.Equal(t, "5", msg.Header.Get(streams.HeaderFirstSeq))
	require.Equal(t, "7", msg.Header.Get(streams.HeaderLastSeq))
	require.Equal(t, "2", msg.Header.Get(streams.HeaderRows))
	require.Equal(t, 1, counter(s.m.batches, 3))
	require.Equal(t, 2, counter(s.m.rows, 3))
	require.Equal(t, 2, counter(s.m.publishRetries, 3), "two failed attempts, retried")
	require.Equal(t, 1, cuts(s, 3, batch.CutAge))
	require.Zero(t, l.inFlight.Load())
	// PurgeDelay 0: the events below the batch's end go at once.
	require.Equal(t, []jetstream.StreamPurgeRequest{{Subject: streams.EventsSubject(3), Sequence: 8}}, events.purges)
	require.Empty(t, l.unpurged)
}

func TestCutHoldsABatchItCannotPublish(t *testing.T) {
	l, s, js, events, _ := newFakeLoop(t, 0)
	owned := true
	l.holds = func() bool { return owned }
	_, rows := newMessage(3, 1)
	l.builder.Add(5, rows, time.Now())
	owned = false // the lease is lost before the publish
	l.cut(t.Context(), batch.CutRows)

	require.Empty(t, js.published)
	require.NotNil(t, l.held, "held for finish, never split or lost")
	require.Equal(t, []uint64{5}, l.held.b.Seq)
	require.ErrorIs(t, l.publish(t.Context(), l.held), shard.ErrNotOwner)
	require.Zero(t, counter(s.m.batches, 3))
	require.Empty(t, events.purges, "EVENTS keeps the events for the next owner")
}

func TestPurgeWaitsForItsDelay(t *testing.T) {
	l, _, _, events, _ := newFakeLoop(t, time.Hour)
	l.schedulePurge(t.Context(), 10)
	l.schedulePurge(t.Context(), 20)
	require.Empty(t, events.purges)
	require.Equal(t, l.unpurged[0].at, l.wakeAt(), "the loop wakes for the first due purge")
	// Both are due: one purge up to the newest.
	for i := range l.unpurged {
		l.unpurged[i].at = time.Now().Add(-time.Second)
	}
	l.purgeDue(t.Context(), time.Now())
	require.Equal(t, []jetstream.StreamPurgeRequest{{Subject: streams.EventsSubject(3), Sequence: 21}}, events.purges)
	require.Empty(t, l.unpurged)
	require.Zero(t, testutil.ToFloat64(l.m.purgeFailures))
}
