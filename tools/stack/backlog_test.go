package stack_test

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/tools/stack"
)

func consumer(pending uint64, subjects ...string) *server.ConsumerInfo {
	return &server.ConsumerInfo{NumPending: pending, Config: &server.ConsumerConfig{FilterSubjects: subjects}}
}

func TestBacklogOf(t *testing.T) {
	info := &server.JSInfo{AccountDetails: []*server.AccountDetail{nil, {
		Name: "$G",
		Streams: []server.StreamDetail{
			// Work queues: what the consumers have not delivered or not
			// seen acked. INGEST also keeps 82 messages its consumer acked
			// (a server killed between the ack and the removal).
			{Name: streams.Ingest, State: server.StreamState{Msgs: 89}, Consumer: []*server.ConsumerInfo{{NumPending: 5, NumAckPending: 2}}},
			{Name: streams.Batches, State: server.StreamState{Msgs: 3}, Consumer: []*server.ConsumerInfo{
				{NumPending: 2, Config: &server.ConsumerConfig{FilterSubject: "batches.shard.0"}},
				{NumAckPending: 1, Config: &server.ConsumerConfig{FilterSubject: "batches.shard.1"}},
				nil,
			}},
			// EVENTS keeps batched messages: only the consumers say what waits.
			{Name: streams.Events, State: server.StreamState{Msgs: 100_000}, Consumer: []*server.ConsumerInfo{
				consumer(4, "events.shard.0"),
				consumer(900, "events.shard.0"), // left by the batcher before a restart
				{NumPending: 6, Config: &server.ConsumerConfig{FilterSubject: "events.shard.1"}},
				consumer(0, "events.shard.2"),
				nil,
			}},
			{Name: streams.DeadLetter, State: server.StreamState{Msgs: 50}},
		},
	}}}
	b := stack.BacklogOf(info)
	require.Equal(t, stack.Backlog{Ingest: 7, Events: 10, Batches: 3}, b)
	require.Equal(t, "backlog: ingest 7, events 10, batches 3", b.String())
	require.False(t, b.Empty())

	// Nobody reads the work queues yet: all their messages wait.
	unread := &server.JSInfo{AccountDetails: []*server.AccountDetail{{Streams: []server.StreamDetail{
		{Name: streams.Ingest, State: server.StreamState{Msgs: 4}},
		{Name: streams.Batches, State: server.StreamState{Msgs: 2}, Consumer: []*server.ConsumerInfo{nil}},
	}}}}
	require.Equal(t, stack.Backlog{Ingest: 4, Batches: 2}, stack.BacklogOf(unread))

	require.True(t, stack.BacklogOf(nil).Empty())
	require.True(t, stack.BacklogOf(&server.JSInfo{}).Empty())
	require.Equal(t, "backlog: ingest 0, events 0, batches 0", stack.BacklogOf(nil).String())
}
