package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
)

// fakeStore is a ClickHouse server in memory for the landing logic: the
// EVENTS sequences it holds of the shard, and the errors its next calls
// return. Methods it does not override panic through the nil interface.
type fakeStore struct {
	store
	held map[uint64]bool
	// The next calls of each method fail with these errors, in order.
	presentErrs, insertErrs []error
	// floor is what Floor answers: the highest sequence this process saw
	// inserted on a replicated server.
	floor uint64
	// landAnyway makes a failed insert land all the same: its outcome is
	// unknown to the sink, as when a connection breaks after the server
	// took the block.
	landAnyway bool
	// insertHook, when set, runs at the start of every insert; its error
	// fails the insert.
	insertHook func(ctx context.Context) error
	// calls lists what the sink asked, in order.
	calls []string
}

func newFakeStore(held ...uint64) *fakeStore {
	st := &fakeStore{held: map[uint64]bool{}}
	for _, seq := range held {
		st.held[seq] = true
	}
	return st
}

func pop(errs *[]error) error {
	if len(*errs) == 0 {
		return nil
	}
	err := (*errs)[0]
	*errs = (*errs)[1:]
	return err
}

func (f *fakeStore) Present(_ context.Context, _ int, b *batch.Batch) (map[uint64]struct{}, error) {
	f.calls = append(f.calls, fmt.Sprintf("present %d-%d", b.FirstSeq, b.LastSeq))
	if err := pop(&f.presentErrs); err != nil {
		return nil, err
	}
	out := map[uint64]struct{}{}
	for _, seq := range b.Seq {
		if f.held[seq] {
			out[seq] = struct{}{}
		}
	}
	return out, nil
}

func (f *fakeStore) Floor(int) uint64 { return f.floor }

func (f *fakeStore) Insert(ctx context.Context, b *batch.Batch) error {
	seqs := slices.Compact(slices.Clone(b.Seq))
	f.calls = append(f.calls, fmt.Sprintf("insert %v", seqs))
	if f.insertHook != nil {
		if err := f.insertHook(ctx); err != nil {
			return err
		}
	}
	err := pop(&f.insertErrs)
	if err == nil || f.landAnyway {
		for _, seq := range seqs {
			f.held[seq] = true
		}
	}
	return err
}

func (f *fakeStore) Addr() string { return "fake:9000" }

// fakeMsg is a BATCHES message that records how the sink settles it.
type fakeMsg struct {
	jetstream.Msg
	subject string
	data    []byte
	header  nats.Header
	seq     uint64

	mu      sync.Mutex
	settled []string // "ack", "nak", "term", in order
	// inProgress counts InProgress calls, late those after a settle.
	inProgress, late int
	// progressed is signalled at each InProgress.
	progressed chan struct{}
}

func newFakeMsg(shard int, seq uint64, data []byte) *fakeMsg {
	return &fakeMsg{subject: streams.BatchesSubject(shard), data: data, header: nats.Header{}, seq: seq, progressed: make(chan struct{}, 1)}
}

func (m *fakeMsg) settle(how string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.settled = append(m.settled, how)
	return nil
}

// counts are the settles and the InProgress calls so far.
func (m *fakeMsg) counts() (settled []string, inProgress, late int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.settled), m.inProgress, m.late
}

func (m *fakeMsg) InProgress() error {
	m.mu.Lock()
	m.inProgress++
	if len(m.settled) > 0 {
		m.late++
	}
	m.mu.Unlock()
	select {
	case m.progressed <- struct{}{}:
	default:
	}
	return nil
}

func (m *fakeMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.seq}}, nil
}
func (m *fakeMsg) Data() []byte                       { return m.data }
func (m *fakeMsg) Headers() nats.Header               { return m.header }
func (m *fakeMsg) Subject() string                    { return m.subject }
func (m *fakeMsg) DoubleAck(context.Context) error    { return m.settle("ack") }
func (m *fakeMsg) Nak() error                         { return m.settle("nak") }
func (m *fakeMsg) Term() error                        { return m.settle("term") }
func (m *fakeMsg) NakWithDelay(time.Duration) error   { panic("the sink never delays a nak") }
func (m *fakeMsg) TermWithReason(reason string) error { panic("the sink terminates without reason") }
func (m *fakeMsg) Ack() error                         { panic("the sink acks with DoubleAck") }
func (m *fakeMsg) Reply() string                      { return "" }

// fakePublisher is JetStream as the dead-letter path sees it.
type fakePublisher struct {
	errs      []error
	attempts  int
	published []*nats.Msg
}

func (p *fakePublisher) PublishMsg(_ context.Context, msg *nats.Msg, _ ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	p.attempts++
	if err := pop(&p.errs); err != nil {
		return nil, err
	}
	p.published = append(p.published, msg)
	return &jetstream.PubAck{Stream: streams.DeadLetter}, nil
}

// fakeJS is JetStream as a shard loop sees it, publishing to pub,
// making consumers with create and resetting them with reset.
type fakeJS struct {
	*fakePublisher
	create func(jetstream.ConsumerConfig) (jetstream.Consumer, error)
	reset  func(consumer string) error
}

func (f fakeJS) ResetConsumer(_ context.Context, _, consumer string) (*jetstream.ConsumerResetResponse, error) {
	if f.reset == nil {
		panic("no consumer reset expected")
	}
	if err := f.reset(consumer); err != nil {
		return nil, err
	}
	return &jetstream.ConsumerResetResponse{}, nil
}

func (f fakeJS) CreateOrUpdateConsumer(_ context.Context, _ string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	if f.create == nil {
		panic("the landing logic makes no consumer")
	}
	return f.create(cfg)
}

// fakeConsumer hands out the messages of msgs, one a fetch; a fetch with
// none waits a moment and returns nothing, as an idle (or stuck) one does.
type fakeConsumer struct {
	jetstream.Consumer
	msgs chan jetstream.Msg
	// ackPending is what Info reports (nil: nothing pending).
	ackPending func() int
	infos      atomic.Int32
	fetches    atomic.Int32
}

func (c *fakeConsumer) Info(context.Context) (*jetstream.ConsumerInfo, error) {
	c.infos.Add(1)
	n := 0
	if c.ackPending != nil {
		n = c.ackPending()
	}
	return &jetstream.ConsumerInfo{NumAckPending: n}, nil
}

func (c *fakeConsumer) Fetch(int, ...jetstream.FetchOpt) (jetstream.MessageBatch, error) {
	c.fetches.Add(1)
	out := make(chan jetstream.Msg, 1)
	select {
	case m := <-c.msgs:
		out <- m
	case <-time.After(time.Millisecond):
	}
	close(out)
	return fakeBatch{out}, nil
}

type fakeBatch struct{ msgs chan jetstream.Msg }

func (b fakeBatch) Messages() <-chan jetstream.Msg { return b.msgs }
func (b fakeBatch) Error() error                   { return nil }

// testRetry retries at once, so the tests wait for no clock.
var testRetry = retry.Config{Initial: time.Millisecond, Max: 2 * time.Millisecond, Multiplier: 2, RandomizationFactor: 0.2}

// newTestService is a sink, not running, for the loops of the tests; its
// keepalive is too slow to tick unless a test shortens it.
func newTestService(t *testing.T, reg *prometheus.Registry, stallTimeout time.Duration) *Service {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Admin.Addr = "127.0.0.1:0"
	cfg.Retry = testRetry
	cfg.ClickHouse.InsertTimeout = time.Second
	cfg.AckWait = time.Hour
	cfg.StallTimeout = stallTimeout
	s, err := New(cfg, service.Deps{Logger: zaptest.NewLogger(t), Registry: reg, TracerProvider: noop.NewTracerProvider()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.host.Close() })
	return s
}

// newTestLoop is the loop of shard 0 of a test sink over st and pub.
func newTestLoop(t *testing.T, st store, pub *fakePublisher) *shardLoop {
	t.Helper()
	return newTestService(t, prometheus.NewRegistry(), time.Hour).newShardLoop(0, fakeJS{fakePublisher: pub}, st)
}

// rowsOf varies the rows per EVENTS message: 1 for even, 2 for odd sequences.
func rowsOf(seq uint64) int { return 1 + int(seq%2) }

func rowsFrom(first, last uint64) float64 {
	n := 0
	for seq := first; seq <= last; seq++ {
		n += rowsOf(seq)
	}
	return float64(n)
}

// testBatch is the batch of EVENTS messages first..last of shard.
func testBatch(shard int, first, last uint64) *batch.Batch {
	b := &batch.Batch{Shard: shard}
	for seq := first; seq <= last; seq++ {
		events := make([]event.Event, rowsOf(seq))
		for i := range events {
			events[i] = event.Event{
				EventID: fmt.Sprintf("ev-%d-%d", seq, i), Tenant: "t", UserID: "u", Type: "page_view",
				TS: time.Unix(int64(seq), 0), ReceivedAt: time.Unix(int64(seq), 0), Properties: "{}",
			}
		}
		b.Append(seq, events)
	}
	return b
}

func seqs(first, last uint64) []uint64 {
	var out []uint64
	for seq := first; seq <= last; seq++ {
		out = append(out, seq)
	}
	return out
}

var errBroken = errors.New("connection reset by peer")

func TestLand(t *testing.T) {
	tests := []struct {
		name string
		// The loop's watermark before the batch, when known.
		known     bool
		watermark uint64
		// The sequences ClickHouse holds, and the failures it answers with.
		held                  []uint64
		floor                 uint64
		presentErr, insertErr error
		// insertErrs, when set, are the inserts' errors in turn, instead
		// of insertErr.
		insertErrs                             []error
		replay                                 bool
		first, last                            uint64
		wantErr                                error
		wantCalls                              []string
		wantSettled                            []string
		wantKnown                              bool
		wantWatermark                          uint64
		wantInserted, wantDuplicates, wantRows float64
	}{
		{
			name: "unknown watermark: the batch's messages are looked up",
			held: seqs(1, 5), first: 6, last: 8,
			wantCalls:   []string{"present 6-8", "insert [6 7 8]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 8,
			wantInserted: 1, wantRows: rowsFrom(6, 8),
		},
		{
			name:  "empty shard: everything is left",
			first: 1, last: 3,
			wantCalls:   []string{"present 1-3", "insert [1 2 3]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 3,
			wantInserted: 1, wantRows: rowsFrom(1, 3),
		},
		{
			name:  "known watermark: no read",
			known: true, watermark: 5, held: seqs(1, 5), first: 6, last: 7,
			wantCalls:   []string{"insert [6 7]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 7,
			wantInserted: 1, wantRows: rowsFrom(6, 7),
		},
		{
			name:  "batch at or below the watermark is acked as a duplicate",
			known: true, watermark: 8, held: seqs(1, 8), first: 3, last: 8,
			wantCalls:   nil,
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 8,
			wantDuplicates: 1,
		},
		{
			name: "the lookup shows the batch landed",
			held: seqs(1, 8), first: 6, last: 8,
			wantCalls:   []string{"present 6-8"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 8,
			wantDuplicates: 1,
		},
		{
			name: "the lookup finds an earlier batch's overlap: only the rest goes",
			held: seqs(1, 4), first: 3, last: 6,
			wantCalls:   []string{"present 3-6", "insert [5 6]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 6,
			wantInserted: 1, wantRows: rowsFrom(5, 6),
		},
		{
			name: "a replica behind the floor does not make rows look missing",
			held: nil, floor: 4, first: 3, last: 6,
			// Rows at or below the floor are not even asked about.
			wantCalls:   []string{"present 5-6", "insert [5 6]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 6,
			wantInserted: 1, wantRows: rowsFrom(5, 6),
		},
		{
			name:  "partial overlap inserts only the rows above the watermark",
			known: true, watermark: 4, held: seqs(1, 4), first: 3, last: 6,
			wantCalls:   []string{"insert [5 6]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 6,
			wantInserted: 1, wantRows: rowsFrom(5, 6),
		},
		{
			name: "lookup error inserts nothing",
			held: seqs(1, 4), presentErr: errBroken, first: 5, last: 6,
			wantErr:   errBroken,
			wantCalls: []string{"present 5-6"},
		},
		{
			name:  "insert error forgets the watermark",
			known: true, watermark: 4, held: seqs(1, 4), insertErr: errBroken, first: 5, last: 6,
			wantErr:   errBroken,
			wantCalls: []string{"insert [5 6]"},
			// The insert may have landed: the next attempt looks it up.
			wantKnown: false, wantWatermark: 4,
		},
		{
			name: "a batch at or below the floor needs no read",
			held: nil, floor: 6, first: 3, last: 6,
			wantCalls:   nil,
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 6,
			wantDuplicates: 1,
		},
		{
			name:  "an insert refused at its commit is sent again at once",
			known: true, watermark: 4, held: seqs(1, 4), insertErrs: []error{fmt.Errorf("send: %w", refusedByAlter)}, first: 5, last: 6,
			wantCalls:   []string{"insert [5 6]", "insert [5 6]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 6,
			wantInserted: 1, wantRows: rowsFrom(5, 6),
		},
		{
			name:  "an insert refused at every commit keeps the watermark",
			known: true, watermark: 4, held: seqs(1, 4), insertErrs: slices.Repeat([]error{fmt.Errorf("send: %w", refusedByAlter)}, commitRaceAttempts), first: 5, last: 6,
			wantErr:   refusedByAlter,
			wantCalls: slices.Repeat([]string{"insert [5 6]"}, commitRaceAttempts),
			// Nothing landed: the next attempt needs no read.
			wantKnown: true, wantWatermark: 4,
		},
		{
			name: "an insert refused at its commit while the watermark is unknown asks again",
			held: seqs(1, 4), insertErrs: []error{fmt.Errorf("send: %w", refusedByAlter)}, first: 3, last: 6,
			wantCalls:   []string{"present 3-6", "insert [5 6]", "present 3-6", "insert [5 6]"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 6,
			wantInserted: 1, wantRows: rowsFrom(5, 6),
		},
		{
			name:  "replay inserts only the sequences ClickHouse lacks",
			known: true, watermark: 10, held: []uint64{1, 2, 3, 6, 7, 8, 9, 10}, replay: true, first: 3, last: 6,
			wantCalls:   []string{"present 3-6", "insert [4 5]"},
			wantSettled: []string{"ack"},
			// A replay may land above the watermark: the next batch is
			// looked up.
			wantKnown: false, wantWatermark: 10,
			wantInserted: 1, wantRows: rowsFrom(4, 5),
		},
		{
			name:  "replay of sequences all present is a duplicate",
			known: true, watermark: 10, held: seqs(1, 10), replay: true, first: 3, last: 6,
			wantCalls:   []string{"present 3-6"},
			wantSettled: []string{"ack"}, wantKnown: true, wantWatermark: 10,
			wantDuplicates: 1,
		},
		{
			name:  "replay presence error inserts nothing",
			known: true, watermark: 10, held: seqs(7, 10), presentErr: errBroken, replay: true, first: 3, last: 6,
			wantErr:   errBroken,
			wantCalls: []string{"present 3-6"}, wantKnown: true, wantWatermark: 10,
		},
		{
			name:  "replay insert error forgets the watermark",
			known: true, watermark: 10, held: seqs(7, 10), insertErr: errBroken, replay: true, first: 3, last: 6,
			wantErr:   errBroken,
			wantCalls: []string{"present 3-6", "insert [3 4 5 6]"},
			wantKnown: false, wantWatermark: 10,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newFakeStore(tc.held...)
			st.floor = tc.floor
			st.presentErrs = []error{tc.presentErr}
			st.insertErrs = []error{tc.insertErr}
			if tc.insertErrs != nil {
				st.insertErrs = tc.insertErrs
			}
			l := newTestLoop(t, st, nil)
			l.known, l.watermark = tc.known, tc.watermark
			b := testBatch(0, tc.first, tc.last)
			msg := newFakeMsg(0, 1, batch.Encode(b))
			if tc.replay {
				msg.header.Set(streams.HeaderReplay, "7")
			}

			err := l.land(t.Context(), msg, newInHand(msg.Data(), b), b.ID(), 1)

			if tc.wantErr != nil {
				require.ErrorIs(t, err, tc.wantErr)
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tc.wantCalls, st.calls, "store calls")
			assert.Equal(t, tc.wantSettled, msg.settled, "message settled")
			assert.Equal(t, tc.wantKnown, l.known, "watermark known")
			assert.Equal(t, tc.wantWatermark, l.watermark, "watermark")
			assert.Equal(t, tc.wantInserted, testutil.ToFloat64(l.m.inserted), "inserted")
			assert.Equal(t, tc.wantDuplicates, testutil.ToFloat64(l.m.duplicates), "duplicates")
			assert.Equal(t, tc.wantRows, testutil.ToFloat64(l.m.rows), "rows")
		})
	}
}

// TestLandSendsNothingAgainOnceTheLeaseIsLost: an insert refused at its
// commit is not sent again once the shard's lease is lost meanwhile.
func TestLandSendsNothingAgainOnceTheLeaseIsLost(t *testing.T) {
	st := newFakeStore(seqs(1, 4)...)
	var mine atomic.Bool
	mine.Store(true)
	st.insertErrs = []error{fmt.Errorf("send: %w", refusedByAlter)}
	st.insertHook = func(context.Context) error {
		mine.Store(false) // lost while the first insert was under way
		return nil
	}
	l := newTestLoop(t, st, nil)
	l.holds = mine.Load
	l.known, l.watermark = true, 4
	b := testBatch(0, 5, 6)
	msg := newFakeMsg(0, 1, batch.Encode(b))

	require.ErrorIs(t, l.land(t.Context(), msg, newInHand(msg.Data(), b), b.ID(), 1), shard.ErrNotOwner)
	require.Equal(t, []string{"insert [5 6]"}, st.calls, "sent once")
	require.Empty(t, msg.settled)
}

// TestLandAfterUnknownOutcome: an insert that failed but landed is not
// repeated: the next attempt looks the batch up and finds it.
func TestLandAfterUnknownOutcome(t *testing.T) {
	st := newFakeStore(seqs(1, 4)...)
	st.insertErrs = []error{errBroken}
	st.landAnyway = true
	l := newTestLoop(t, st, nil)
	l.known, l.watermark = true, 4
	b := testBatch(0, 5, 6)
	msg := newFakeMsg(0, 1, batch.Encode(b))

	// The second attempt decodes the message again: the first let its rows go.
	h := newInHand(msg.Data(), b)
	require.ErrorIs(t, l.land(t.Context(), msg, h, b.ID(), 1), errBroken)
	require.Nil(t, h.b, "the decoded batch is the first attempt's")
	require.NoError(t, l.land(t.Context(), msg, h, b.ID(), 2))

	require.Equal(t, []string{"insert [5 6]", "present 5-6"}, st.calls)
	require.Equal(t, []string{"ack"}, msg.settled)
	require.Equal(t, uint64(6), l.watermark)
	require.Equal(t, 1.0, testutil.ToFloat64(l.m.duplicates))
	require.Zero(t, testutil.ToFloat64(l.m.inserted))
}

// refusedByAlter is ClickHouse 18.16 refusing an insert's commit because a
// column's ALTER committed meanwhile: nothing of it landed.
var refusedByAlter = &clickhouse.Exception{Code: 244, Name: "UNEXPECTED_ZOOKEEPER_ERROR",
	Message: "Unexpected logical error while adding block 73 with ID '202612_1_2': Bad version, path /clickhouse/tables/0/surge/events_local/columns"}

// typeMismatch is a ClickHouse error about the batch's content.
var typeMismatch = &clickhouse.Exception{Code: 53, Name: "TYPE_MISMATCH", Message: "Type mismatch in column user_id"}

func TestHandle(t *testing.T) {
	good := testBatch(0, 5, 7)
	tests := []struct {
		name string
		data []byte
		// stopped: the sink is shutting down when the batch is handled.
		stopped    bool
		insertErrs []error
		publishErr []error
		// What should happen.
		wantCalls       []string
		wantSettled     []string
		wantRetries     float64
		wantPublishes   int
		wantDeadLetters float64
		wantReason      string
	}{
		{
			name:        "lands at the first attempt",
			data:        batch.Encode(good),
			wantCalls:   []string{"present 5-7", "insert [5 6 7]"},
			wantSettled: []string{"ack"},
		},
		{
			name:       "transient failures are retried, the batch looked up again each time",
			data:       batch.Encode(good),
			insertErrs: []error{errBroken, errBroken},
			wantCalls: []string{
				"present 5-7", "insert [5 6 7]",
				"present 5-7", "insert [5 6 7]",
				"present 5-7", "insert [5 6 7]",
			},
			wantSettled: []string{"ack"},
			wantRetries: 2,
		},
		{
			name:            "permanent failure is dead-lettered at once",
			data:            batch.Encode(good),
			insertErrs:      []error{fmt.Errorf("send: %w", typeMismatch)},
			wantCalls:       []string{"present 5-7", "insert [5 6 7]"},
			wantSettled:     []string{"term"},
			wantPublishes:   1,
			wantDeadLetters: 1,
			wantReason:      "Type mismatch in column user_id",
		},
		{
			name:            "corrupt batch is dead-lettered without touching ClickHouse",
			data:            []byte("definitely not a batch"),
			wantSettled:     []string{"term"},
			wantPublishes:   1,
			wantDeadLetters: 1,
			wantReason:      "corrupt batch encoding",
		},
		{
			name:            "batch of another shard is dead-lettered",
			data:            batch.Encode(testBatch(1, 5, 7)),
			wantSettled:     []string{"term"},
			wantPublishes:   1,
			wantDeadLetters: 1,
			wantReason:      "batch of shard 1 on batches.shard.0",
		},
		{
			name:            "dead-letter publish is retried",
			data:            []byte("definitely not a batch"),
			publishErr:      []error{errBroken},
			wantSettled:     []string{"term"},
			wantRetries:     1,
			wantPublishes:   2,
			wantDeadLetters: 1,
			wantReason:      "corrupt batch encoding",
		},
		{
			name:        "shutdown lets a fetched batch land",
			data:        batch.Encode(good),
			stopped:     true,
			wantCalls:   []string{"present 5-7", "insert [5 6 7]"},
			wantSettled: []string{"ack"},
		},
		{
			name:       "shutdown cuts the wait, not the attempt, and releases the batch",
			data:       batch.Encode(good),
			stopped:    true,
			insertErrs: []error{errBroken},
			wantCalls:  []string{"present 5-7", "insert [5 6 7]"},
			// Naked for the next owner of the shard.
			wantSettled: []string{"nak"},
		},
		{
			name:          "shutdown while a dead letter cannot be published releases the batch",
			data:          []byte("definitely not a batch"),
			stopped:       true,
			publishErr:    []error{errBroken},
			wantSettled:   []string{"nak"},
			wantPublishes: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newFakeStore(seqs(1, 4)...)
			st.insertErrs = tc.insertErrs
			pub := &fakePublisher{errs: tc.publishErr}
			l := newTestLoop(t, st, pub)
			msg := newFakeMsg(0, 42, tc.data)
			msg.header.Set(streams.HeaderBatchID, "0:5-7")
			ctx := t.Context()
			if tc.stopped {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				cancel()
			}

			l.handle(ctx, msg)

			assert.Equal(t, tc.wantCalls, st.calls, "store calls")
			assert.Equal(t, tc.wantSettled, msg.settled, "message settled")
			assert.Equal(t, tc.wantRetries, testutil.ToFloat64(l.m.retries), "retries")
			assert.Equal(t, tc.wantPublishes, pub.attempts, "publish attempts")
			assert.Equal(t, tc.wantDeadLetters, testutil.ToFloat64(l.m.deadLetters), "dead letters")
			assert.Equal(t, tc.wantDeadLetters, testutil.ToFloat64(l.m.deadLettered), "batches dead-lettered")
			if tc.wantDeadLetters == 0 {
				return
			}
			require.Len(t, pub.published, 1)
			dl := pub.published[0]
			assert.Equal(t, streams.DeadLetterSubject("sink", 0), dl.Subject)
			assert.Equal(t, tc.data, dl.Data)
			assert.Contains(t, dl.Header.Get(streams.HeaderReason), tc.wantReason)
			assert.Equal(t, streams.BatchesSubject(0), dl.Header.Get(streams.HeaderSource))
			assert.Equal(t, "42", dl.Header.Get(streams.HeaderSourceSeq))
			assert.Equal(t, "0:5-7", dl.Header.Get(streams.HeaderBatchID))
			assert.Equal(t, "sink:batches.shard.0:42", dl.Header.Get(jetstream.MsgIDHeader))
		})
	}
}

// TestShardMetricsAreTheShardsSeries: the series a loop looks up once are
// those exported under its shard's label.
func TestShardMetricsAreTheShardsSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	sm := m.forShard(3)
	sm.inserted.Inc()
	sm.deadLettered.Add(2)
	sm.watermark.Set(17)
	require.Equal(t, 1.0, testutil.ToFloat64(m.batches.WithLabelValues("3", outcomeInserted)))
	require.Equal(t, 2.0, testutil.ToFloat64(m.batches.WithLabelValues("3", outcomeDeadLetter)))
	require.Equal(t, 17.0, testutil.ToFloat64(m.watermark.WithLabelValues(strconv.Itoa(3))))
}

// waitProgress is an insert hook that returns after n InProgress calls
// on msg, or fails permanently (the batch would be dead-lettered) when
// its context ends first.
func waitProgress(msg interface{ progressedC() <-chan struct{} }, n int) func(context.Context) error {
	return func(ctx context.Context) error {
		for range n {
			select {
			case <-msg.progressedC():
			case <-ctx.Done():
				return fmt.Errorf("no keepalive: %w (%w)", ctx.Err(), typeMismatch)
			}
		}
		return nil
	}
}

func (m *fakeMsg) progressedC() <-chan struct{} { return m.progressed }

// TestKeepaliveCoversASlowInsert: an insert lasting many keepalive
// periods keeps the batch in progress all along; the keepalive stops
// before the batch is acked.
func TestKeepaliveCoversASlowInsert(t *testing.T) {
	st := newFakeStore(seqs(1, 4)...)
	l := newTestLoop(t, st, &fakePublisher{})
	l.alive.Every = 5 * time.Millisecond
	l.insertTimeout = 10 * time.Second
	b := testBatch(0, 5, 7)
	msg := newFakeMsg(0, 1, batch.Encode(b))
	st.insertHook = waitProgress(msg, 5)

	l.handle(t.Context(), msg)

	settled, inProgress, late := msg.counts()
	require.Equal(t, []string{"ack"}, settled)
	require.GreaterOrEqual(t, inProgress, 5)
	require.Zero(t, late, "no InProgress after the ack")
	require.Equal(t, 1.0, testutil.ToFloat64(l.m.inserted))
	require.Zero(t, l.alive.Held(), "the keepalive ended with the batch")
}

// TestKeepaliveCoversRetryWaits: the waits between retries keep the batch
// in progress too, and so does a dead-letter publish.
func TestKeepaliveCoversRetryWaits(t *testing.T) {
	st := newFakeStore(seqs(1, 4)...)
	pub := &fakePublisher{errs: []error{errBroken}}
	l := newTestLoop(t, st, pub)
	l.alive.Every = 5 * time.Millisecond
	l.retry = retry.Config{Initial: 200 * time.Millisecond, Max: 200 * time.Millisecond, Multiplier: 1, RandomizationFactor: 0}
	msg := newFakeMsg(0, 1, []byte("definitely not a batch"))

	l.handle(t.Context(), msg)

	settled, inProgress, late := msg.counts()
	require.Equal(t, []string{"term"}, settled)
	require.Equal(t, 2, pub.attempts)
	// 200ms of wait at one keepalive every 5ms: many, whatever the scheduler.
	require.GreaterOrEqual(t, inProgress, 3)
	require.Zero(t, late)
}

// TestStalledFetchRecreatesTheConsumer: a shard whose fetches return
// nothing while the watchdog sees batches waiting is stalled; the loop
// then makes its consumer again, once, and goes on with the new one.
func TestStalledFetchRecreatesTheConsumer(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newTestService(t, reg, 50*time.Millisecond)
	b := testBatch(0, 5, 7)
	msg := newFakeMsg(0, 1, batch.Encode(b))
	fresh := &fakeConsumer{msgs: make(chan jetstream.Msg, 1)}
	fresh.msgs <- msg
	var mu sync.Mutex
	var created []jetstream.ConsumerConfig
	js := fakeJS{create: func(cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
		mu.Lock()
		defer mu.Unlock()
		created = append(created, cfg)
		return fresh, nil
	}}
	st := newFakeStore(seqs(1, 4)...)
	l := s.newShardLoop(0, js, st)
	l.cons = &fakeConsumer{} // a consumer that delivers nothing

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	// The poller's view: a batch waits and none lands. It asks the loop
	// to repair the stall, once (liveness.Poller).
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.True(c, l.w.Check(1))
	}, 10*time.Second, 10*time.Millisecond)
	require.True(t, l.w.Repair())
	require.NoError(t, l.Repair(ctx, "stalled"))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		settled, _, _ := msg.counts()
		assert.Equal(c, []string{"ack"}, settled)
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	<-done

	require.False(t, l.w.Stalled(), "the ack was progress")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []jetstream.ConsumerConfig{s.cfg.ConsumerConfig(0)}, created)
	require.Equal(t, 1.0, testutil.ToFloat64(l.m.inserted))
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP surge_sink_stalls_total Times a unit of work (a shard, or the partitioner's input) had work pending and made no progress for the stall timeout, by shard.
# TYPE surge_sink_stalls_total counter
surge_sink_stalls_total{shard="0"} 1
`), "surge_sink_stalls_total"))
}

// TestLostDeliveryIsHandedOutAgain: a consumer that counts a batch as
// delivered while the loop got none (a delivery or an ack lost with a
// NATS node or a leader change) is reset after the first empty fetch, so
// the batch comes again at once rather than after the ack wait; a
// consumer with nothing pending is asked once and left alone.
func TestLostDeliveryIsHandedOutAgain(t *testing.T) {
	for _, lost := range []bool{true, false} {
		t.Run(fmt.Sprintf("lost=%v", lost), func(t *testing.T) {
			reg := prometheus.NewRegistry()
			s := newTestService(t, reg, time.Hour)
			msg := newFakeMsg(0, 1, batch.Encode(testBatch(0, 5, 7)))
			var pending atomic.Int32
			if lost {
				pending.Store(1)
			}
			cons := &fakeConsumer{msgs: make(chan jetstream.Msg, 1), ackPending: func() int { return int(pending.Load()) }}
			var resets atomic.Int32
			js := fakeJS{reset: func(consumer string) error {
				if consumer != ConsumerName(0) {
					return fmt.Errorf("reset of %s", consumer)
				}
				resets.Add(1)
				cons.msgs <- msg // handed out again
				return nil
			}}
			l := s.newShardLoop(0, js, newFakeStore(seqs(1, 4)...))
			l.cons = cons

			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() {
				defer close(done)
				l.Run(ctx)
			}()
			if lost {
				require.EventuallyWithT(t, func(c *assert.CollectT) {
					settled, _, _ := msg.counts()
					assert.Equal(c, []string{"ack"}, settled)
				}, 10*time.Second, 5*time.Millisecond)
			} else {
				require.EventuallyWithT(t, func(c *assert.CollectT) {
					assert.Equal(c, int32(1), cons.infos.Load())
				}, 10*time.Second, 5*time.Millisecond)
			}
			// Many empty fetches later, nothing more was asked or reset.
			after := cons.fetches.Load() + 20
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				assert.GreaterOrEqual(c, cons.fetches.Load(), after)
			}, 10*time.Second, time.Millisecond)
			cancel()
			<-done
			want := 0
			if lost {
				want = 1
			}
			require.Equal(t, int32(want), resets.Load())
			require.Equal(t, int32(1), cons.infos.Load())
			require.Equal(t, float64(want), testutil.ToFloat64(l.m.resets))
		})
	}
}

// TestPolledAckPendingHandsALostDeliveryOutAgain: mid-tenure, with no
// failed fetch or ack to make the loop unsure (a delivery lost in a
// leader's graceful handover raises no error), the poller's reading of an
// ack pending batch has the loop, at its next empty fetch, reset the
// consumer: the batch comes again at once, not after the ack wait.
func TestPolledAckPendingHandsALostDeliveryOutAgain(t *testing.T) {
	s := newTestService(t, prometheus.NewRegistry(), time.Hour)
	msg := newFakeMsg(0, 1, batch.Encode(testBatch(0, 5, 7)))
	var pending atomic.Int32
	cons := &fakeConsumer{msgs: make(chan jetstream.Msg, 1), ackPending: func() int { return int(pending.Load()) }}
	var resets atomic.Int32
	js := fakeJS{reset: func(string) error {
		resets.Add(1)
		pending.Store(0)
		cons.msgs <- msg // handed out again
		return nil
	}}
	l := s.newShardLoop(0, js, newFakeStore(seqs(1, 4)...))
	l.cons = cons

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx)
	}()
	// The tenure's first empty fetch asks once and finds nothing pending.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, int32(1), cons.infos.Load())
	}, 10*time.Second, time.Millisecond)
	after := cons.fetches.Load() + 20
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.GreaterOrEqual(c, cons.fetches.Load(), after)
	}, 10*time.Second, time.Millisecond)
	require.Equal(t, int32(1), cons.infos.Load(), "idle and sure: no more asking")

	// A delivery is lost: the consumer counts it pending, the poller sees it.
	pending.Store(1)
	l.ackPending.Store(true)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		settled, _, _ := msg.counts()
		assert.Equal(c, []string{"ack"}, settled)
	}, 10*time.Second, 5*time.Millisecond)
	cancel()
	<-done
	require.Equal(t, int32(1), resets.Load())
	require.Equal(t, int32(2), cons.infos.Load())
}

// A presence read that a silent replica leaves unknown fails the attempt
// (the shard waits) until presenceWaitMax has passed for the batch; then
// the batch goes by what the answering replicas hold, and the guess is
// counted.
func TestLandGoesByTheAnswersOnceASilentReplicaOutlastsTheBound(t *testing.T) {
	unknown := &presenceUnknown{answered: map[uint64]struct{}{5: {}}, why: "replica a does not answer"}
	st := newFakeStore()
	st.presentErrs = []error{unknown, unknown}
	l := newTestLoop(t, st, nil)
	b := testBatch(0, 5, 7)
	msg := newFakeMsg(0, 1, batch.Encode(b))

	h := newInHand(msg.Data(), b)
	var unknownErr *presenceUnknown
	require.ErrorAs(t, l.land(t.Context(), msg, h, b.ID(), 1), &unknownErr)
	require.Equal(t, []string{"present 5-7"}, st.calls, "nothing inserted on a guess")
	require.False(t, l.silentSince.IsZero())

	l.silentSince = time.Now().Add(-presenceWaitMax) // the bound has passed
	require.NoError(t, l.land(t.Context(), msg, h, b.ID(), 2))
	require.Equal(t, []string{"present 5-7", "present 5-7", "insert [6 7]"}, st.calls)
	require.Equal(t, []string{"ack"}, msg.settled)
	require.Equal(t, 1.0, testutil.ToFloat64(l.m.guesses))
}
