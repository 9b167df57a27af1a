package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/producers"
	"github.com/surge-events/surge/services/ingest"
	"github.com/surge-events/surge/tools/stack"
)

// TestHotKeyDoesNotHoldBackOtherShards: one user id at a very high rate
// lands on one shard. Once the partitioner has moved its 1,200,000 events
// into that shard, events of every other shard sent over HTTP become
// queryable while the hot shard's batcher and sink still work through
// its backlog: counted as work, not time, the hot shard still had at
// least half its rows to insert when the last of the others was
// queryable. Then every hot event lands, once.
func TestHotKeyDoesNotHoldBackOtherShards(t *testing.T) {
	st := startStack(t)
	ch := openServers(t, st)[0]
	ctx := t.Context()

	const (
		tenant          = "demo"
		hotUser         = "hot-user"
		hotMsgs, perMsg = 2400, 500
		hotEvents       = hotMsgs * perMsg
		coldPerShard    = 100
	)
	hot := shard.Of(tenant, hotUser, shards)

	nc, err := nats.Connect(st.NATS.ClientURL(), nats.UserInfo(stack.ServiceUser, stack.ServicePassword))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	events := make([]producers.Event, perMsg)
	for i := range hotMsgs {
		for j := range events {
			events[j] = producers.Event{ID: fmt.Sprintf("hot-%d-%d", i, j), UserID: hotUser, Type: "hot"}
		}
		_, err := js.PublishAsync(streams.ProducerPrefix+tenant+".hot", producers.Message(events))
		require.NoError(t, err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatal("the hot user's messages were not stored")
	}

	// The partitioner has put the whole hot backlog into its shard.
	partitioned := func() float64 { return stack.Sum(st.Part("partitioner").Registry, "surge_partitioner_events_total") }
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.GreaterOrEqual(c, partitioned(), float64(hotEvents))
	}, time.Minute, 10*time.Millisecond)
	hotRows := func() float64 {
		return stack.SumWhere(st.Part("sink").Registry, "surge_sink_rows_inserted_total", "shard", strconv.Itoa(hot))
	}
	before := hotRows()
	require.Less(t, before, float64(hotEvents), "the hot shard had its backlog still to insert when the others' events were sent")

	// One user of each other shard, over HTTP (the default tenant).
	defaultTenant := ingest.DefaultConfig().Ingest.DefaultTenant
	var cold strings.Builder
	cold.WriteByte('[')
	n := 0
	for k := range shards {
		if k == hot {
			continue
		}
		user := ""
		for u := 0; user == ""; u++ {
			if cand := "cold-" + strconv.Itoa(u); shard.Of(defaultTenant, cand, shards) == k {
				user = cand
			}
		}
		for j := range coldPerShard {
			if n > 0 {
				cold.WriteByte(',')
			}
			fmt.Fprintf(&cold, `{"event_id":"cold-%d-%d","user_id":%q,"type":"cold"}`, k, j, user)
			n++
		}
	}
	cold.WriteByte(']')
	require.NoError(t, postEvents(ctx, st.IngestURL+ingest.EventsPath, []byte(cold.String()), n))
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err := count(ctx, ch, "SELECT count() FROM "+st.Database+".events WHERE type = 'cold'")
		if assert.NoError(c, err) {
			assert.Equal(c, uint64(n), got)
		}
	}, time.Minute, 10*time.Millisecond)
	left := float64(hotEvents) - hotRows()
	t.Logf("hot shard %d: %.0f of %d rows inserted when the others' events were sent, %.0f still to insert when the last of them was queryable",
		hot, before, hotEvents, left)
	// In stream order the others would wait for all of it; they waited for
	// less than half (measured: 70,000-95,000 of 1,200,000 rows).
	require.GreaterOrEqual(t, left, float64(hotEvents)/2, "the other shards' events waited for the hot shard's backlog")

	// Every hot event lands, once.
	requireCount(t, ch, "SELECT count() FROM "+st.Database+".events WHERE user_id = '"+hotUser+"'", hotEvents, 2*time.Minute)
	ids, err := count(ctx, ch, "SELECT uniqExact(event_id) FROM "+st.Database+".events WHERE user_id = '"+hotUser+"'")
	require.NoError(t, err)
	require.Equal(t, uint64(hotEvents), ids)
}
