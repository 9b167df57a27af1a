package natscluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Acked is one message of a Feed that JetStream acknowledged.
type Acked struct {
	// N is the message's number, as passed to the Feed's next.
	N int
	// Seq is its stream sequence (the first copy's, for a duplicate).
	Seq uint64
	// At is when the PubAck arrived.
	At time.Time
	// Attempts is how many publishes it took.
	Attempts int
}

// Feed publishes a steady stream of messages into the cluster from its own
// connection, as a well-behaved producer does through leader changes:
// each message carries a Nats-Msg-Id and is published again until it is
// acked, so a message whose ack was lost is stored once.
type Feed struct {
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done closes

	mu    sync.Mutex
	acked []Acked
	sent  int // messages whose publish started
}

// feedAttemptTimeout bounds one publish attempt of a Feed.
const feedAttemptTimeout = time.Second

// Feed starts publishing next(0), next(1), ... one every `every` (each
// waits for the previous one's ack) until Stop. next must set the message
// id header (jetstream.MsgIDHeader).
func (c *Cluster) Feed(every time.Duration, next func(n int) *nats.Msg) (*Feed, error) {
	nc, err := nats.Connect(c.URLs(), nats.Name("natscluster-feed"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.ReconnectBufSize(-1))
	if err != nil {
		return nil, fmt.Errorf("feed: connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("feed: jetstream: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Feed{nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.err = f.run(ctx, js, every, next)
	}()
	return f, nil
}

func (f *Feed) run(ctx context.Context, js jetstream.JetStream, every time.Duration, next func(n int) *nats.Msg) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for n := 0; ; n++ {
		msg := next(n)
		f.mu.Lock()
		f.sent = n + 1
		f.mu.Unlock()
		if msg.Header.Get(jetstream.MsgIDHeader) == "" {
			return fmt.Errorf("feed: message %d has no %s", n, jetstream.MsgIDHeader)
		}
		for attempt := 1; ; attempt++ {
			actx, cancel := context.WithTimeout(ctx, feedAttemptTimeout)
			ack, err := js.PublishMsg(actx, msg)
			cancel()
			if ctx.Err() != nil {
				return nil // stopped: an unacked last message is no error
			}
			if err == nil {
				f.mu.Lock()
				f.acked = append(f.acked, Acked{N: n, Seq: ack.Sequence, At: time.Now(), Attempts: attempt})
				f.mu.Unlock()
				break
			}
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum {
				return fmt.Errorf("feed: message %d: %w", n, err)
			}
			select { // a short pause after a failed attempt
			case <-ctx.Done():
				return nil
			case <-time.After(20 * time.Millisecond):
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Acked is every message acked so far, in order.
func (f *Feed) Acked() []Acked {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Acked(nil), f.acked...)
}

// FirstAckedAfter is, for each of groups groups (message n is in group
// group(n)), the first message acked after t0; ok is false while a group
// has none yet.
func (f *Feed) FirstAckedAfter(t0 time.Time, groups int, group func(n int) int) (first []Acked, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	first = make([]Acked, groups)
	found := 0
	for _, a := range f.acked {
		if g := group(a.N); a.At.After(t0) && first[g].At.IsZero() {
			first[g] = a
			if found++; found == groups {
				return first, true
			}
		}
	}
	return first, false
}

// Once checks what a test read back, seen (an id -> its copies), against
// the feed: each id (ids(n)) of every acked message once, each of a
// message Stop interrupted (stored or not) at most once, and no other.
func (f *Feed) Once(seen map[string]int, ids func(n int) []string) error {
	f.mu.Lock()
	acked, sent := len(f.acked), f.sent
	f.mu.Unlock()
	want := 0
	for n := range sent {
		for _, id := range ids(n) {
			switch c := seen[id]; {
			case n < acked && c != 1:
				return fmt.Errorf("id %s of acked message %d seen %d times, want once", id, n, c)
			case c > 1:
				return fmt.Errorf("id %s of interrupted message %d seen %d times, want at most once", id, n, c)
			}
			want += seen[id]
		}
	}
	if len(seen) != want {
		return fmt.Errorf("%d ids seen, %d of them the feed's", len(seen), want)
	}
	return nil
}

// Count is how many messages were acked so far.
func (f *Feed) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.acked)
}

// Sent is how many messages the feed started to publish: the acked ones
// and, when Stop interrupted one, that one too, which may or may not be
// stored.
func (f *Feed) Sent() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent
}

// Stop ends the feed, waits for its goroutine, closes its connection and
// returns what stopped it early, if anything. Stop may be called again.
func (f *Feed) Stop() error {
	f.cancel()
	<-f.done
	f.nc.Close()
	return f.err
}

// StreamInfo is stream's info, asked through the JetStream API (bounded by
// a request timeout); it fails while the stream has no leader.
func (c *Cluster) StreamInfo(stream string) (*jetstream.StreamInfo, error) {
	js, err := c.JetStream()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	return s.CachedInfo(), nil
}
