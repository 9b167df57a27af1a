package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/tools/stack"
)

// benchProducer is the NATS login `surge bench --via nats` publishes as.
var benchProducer = natsserver.User{Name: "bench", Password: "bench-local", Tenant: "bench"}

// benchSubject is where `surge bench --via nats` publishes.
var benchSubject = streams.ProducerPrefix + benchProducer.Tenant + ".bench"

const (
	// publishTimeout bounds the wait for a PubAck: the client fails an
	// async publish unanswered for that long.
	publishTimeout = 10 * time.Second
	// settleTimeout bounds a wait for an async publish to settle, should
	// the client's own timeout not fire.
	settleTimeout = publishTimeout + 5*time.Second
)

// natsProducer publishes bench bodies as a tenant's producer would: JSON
// straight to surge.in.<tenant>.bench, each message with a Nats-Msg-Id so
// a retried publish is stored once.
type natsProducer struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	run string
	n   atomic.Uint64
}

func newNATSProducer(st *stack.Stack) (*natsProducer, error) {
	nc, err := nats.Connect(st.NATS.ClientURL(), nats.UserInfo(benchProducer.Name, benchProducer.Password),
		nats.CustomInboxPrefix(streams.ProducerInboxPrefix(benchProducer.Tenant)))
	if err != nil {
		return nil, fmt.Errorf("connect as producer: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(512), jetstream.WithPublishAsyncTimeout(publishTimeout))
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &natsProducer{nc: nc, js: js, run: strconv.FormatInt(time.Now().UnixNano(), 36)}, nil
}

func (p *natsProducer) close() { p.nc.Close() }

func (p *natsProducer) msgID() string { return p.run + "-" + strconv.FormatUint(p.n.Add(1), 10) }

// send publishes one body and waits for its PubAck, at most
// publishTimeout and no longer than ctx.
func (p *natsProducer) send(ctx context.Context, body []byte) bool {
	ctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	_, err := p.js.Publish(ctx, benchSubject, body, jetstream.WithMsgID(p.msgID()))
	return err == nil
}

// throughputNATS sends the throughput phase's load with async JetStream
// publishes: each client keeps a window of publishes in flight and
// counts a message accepted at its PubAck, resending (same id) on error.
func throughputNATS(ctx context.Context, st *stack.Stack, gen *generator, f benchFlags) (throughputResult, error) {
	p, err := newNATSProducer(st)
	if err != nil {
		return throughputResult{}, err
	}
	defer p.close()
	const window = 64 // publishes in flight per client
	requests := f.events / f.perRequest
	var sent, failed atomic.Int64
	base := st.Inserted()
	start := time.Now()
	var wg sync.WaitGroup
	for range f.clients {
		wg.Go(func() {
			type pending struct {
				msg *nats.Msg
				f   jetstream.PubAckFuture
			}
			var inflight []pending
			// publish sends m until JetStream takes it or ctx ends.
			publish := func(m *nats.Msg) {
				_ = retry.Do(ctx, resend, func() error {
					fut, err := p.js.PublishMsgAsync(m)
					if err == nil {
						inflight = append(inflight, pending{m, fut})
					}
					return err
				}, func(int, error, time.Duration) { failed.Add(1) })
			}
			// settle waits for the oldest publish's PubAck: at most
			// settleTimeout (the client fails it after publishTimeout),
			// no longer than ctx. A failed one is resent with its id.
			settle := func() {
				head := inflight[0]
				inflight = inflight[1:]
				wait := time.NewTimer(settleTimeout)
				defer wait.Stop()
				select {
				case <-head.f.Ok():
					gen.accepted.Add(int64(f.perRequest))
					return
				case <-ctx.Done():
					return
				case <-head.f.Err(): // the stream pushes back
				case <-wait.C:
				}
				failed.Add(1)
				if retry.Sleep(ctx, resend.Initial) {
					publish(head.msg)
				}
			}
			for sent.Add(1) <= int64(requests) && ctx.Err() == nil {
				m := nats.NewMsg(benchSubject)
				m.Data = gen.body()
				m.Header.Set(jetstream.MsgIDHeader, p.msgID())
				publish(m)
				if len(inflight) >= window {
					settle()
				}
			}
			for len(inflight) > 0 && ctx.Err() == nil {
				settle()
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		fmt.Printf("bench: %d publishes were refused under pressure and resent\n", n)
	}
	return awaitInserted(ctx, stackInserted(st), start, base, requests*f.perRequest)
}
