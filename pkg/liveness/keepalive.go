package liveness

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Keepalive keeps the JetStream messages a worker holds from being handed
// out again while it works on them: an InProgress every Every (a third of
// the consumer's AckWait) restarts their AckWait. So a short AckWait
// bounds only how long a dead or cut-off holder's messages stay locked,
// not how long an insert, a retry or a PubAck wait may take. Its goroutine
// runs from the first Hold until Stop, which the holder calls before it
// settles the messages. Not for concurrent use by several holders.
type Keepalive struct {
	// Every is the period of the InProgress calls.
	Every time.Duration

	mu   sync.Mutex
	held []jetstream.Msg
	quit chan struct{} // nil while no goroutine runs
	done chan struct{}
}

// Hold adds msg to the messages kept alive.
func (k *Keepalive) Hold(msg jetstream.Msg) {
	k.mu.Lock()
	k.held = append(k.held, msg)
	k.mu.Unlock()
	if k.quit == nil {
		k.quit, k.done = make(chan struct{}), make(chan struct{})
		go k.run(k.quit, k.done)
	}
}

// Held is how many messages are kept alive now.
func (k *Keepalive) Held() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.held)
}

func (k *Keepalive) run(quit <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(k.Every)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case <-t.C:
		}
		k.mu.Lock()
		held := k.held // Hold only appends: this prefix stays as it is
		k.mu.Unlock()
		for _, msg := range held {
			// It fails for a message already settled, which needs none,
			// or on a closed connection, whose messages are redelivered
			// anyway when the AckWait runs out.
			_ = msg.InProgress()
		}
	}
}

// Stop ends the goroutine, waits for it and forgets the messages. Stop
// without Hold does nothing.
func (k *Keepalive) Stop() {
	if k.quit == nil {
		return
	}
	close(k.quit)
	<-k.done
	k.quit, k.done = nil, nil
	k.mu.Lock()
	clear(k.held)
	k.held = k.held[:0]
	k.mu.Unlock()
}
