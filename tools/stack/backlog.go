package stack

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/surge-events/surge/pkg/streams"
)

// Backlog is the work waiting between the stages, read from JetStream's
// own state, so it counts what earlier runs left as well as this one's.
type Backlog struct {
	// Ingest is INGEST's messages (ingest's requests, producers' messages)
	// the partitioner has not acked.
	Ingest uint64
	// Events is EVENTS' messages the batcher has not read yet (the
	// batcher's consumers' pending count, per shard).
	Events uint64
	// Batches is BATCHES' batches the sink has not acked.
	Batches uint64
}

func (b Backlog) String() string {
	return fmt.Sprintf("backlog: ingest %d, events %d, batches %d", b.Ingest, b.Events, b.Batches)
}

// Empty reports whether nothing waits.
func (b Backlog) Empty() bool { return b == Backlog{} }

// Backlog reads the backlog from the embedded NATS server.
func (s *Stack) Backlog() (Backlog, error) {
	info, err := s.NATS.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
	if err != nil {
		return Backlog{}, fmt.Errorf("jetstream state: %w", err)
	}
	return BacklogOf(info), nil
}

// BacklogOf computes the backlog from JetStream's state.
//
// INGEST and BATCHES are work queues: a message stays until its consumer
// acks it, so their backlog is what their consumers have still to deliver
// or have acked (all their messages while no consumer reads them). Not
// their message count: a server killed between an ack and the removal can
// keep messages whose consumer has acked them, which nothing will deliver
// again. EVENTS keeps batched messages for a while (the batcher purges
// them later), so its backlog is what its consumers have still to
// deliver. The batcher reads each shard with an ordered consumer that a
// restart replaces; the one it left behind lingers on the server until
// its inactivity threshold and counts everything since it stopped, so per
// shard (filter subject) the smallest count is the batcher's.
func BacklogOf(info *server.JSInfo) Backlog {
	var b Backlog
	if info == nil {
		return b
	}
	for _, acc := range info.AccountDetails {
		if acc == nil {
			continue
		}
		for _, st := range acc.Streams {
			switch st.Name {
			case streams.Ingest:
				b.Ingest += unacked(st)
			case streams.Batches:
				b.Batches += unacked(st)
			case streams.Events:
				b.Events += unread(st.Consumer)
			}
		}
	}
	return b
}

// unacked is what a work queue's consumers have still to deliver or have
// acked; with no consumer, every message of the stream.
func unacked(st server.StreamDetail) uint64 {
	var total uint64
	read := false
	for _, c := range st.Consumer {
		if c == nil {
			continue
		}
		read = true
		total += c.NumPending + uint64(max(c.NumAckPending, 0))
	}
	if !read {
		return st.State.Msgs
	}
	return total
}

// unread adds, over the subjects the consumers filter, the smallest
// pending count of the consumers on that subject.
func unread(consumers []*server.ConsumerInfo) uint64 {
	least := map[string]uint64{}
	for _, c := range consumers {
		if c == nil {
			continue
		}
		var subjects []string
		if c.Config != nil {
			if c.Config.FilterSubject != "" {
				subjects = append(subjects, c.Config.FilterSubject)
			}
			subjects = append(subjects, c.Config.FilterSubjects...)
		}
		key := strings.Join(subjects, " ")
		if n, ok := least[key]; !ok || c.NumPending < n {
			least[key] = c.NumPending
		}
	}
	var total uint64
	for _, n := range least {
		total += n
	}
	return total
}
