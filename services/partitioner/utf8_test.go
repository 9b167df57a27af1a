package partitioner

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// TestProducerEventsWithInvalidTextAreDeadLettered: a producer event
// holding text that is not valid Unicode (raw bytes or a lone surrogate
// escape) goes to DEAD_LETTER naming the field; the valid event beside it
// flows.
func TestProducerEventsWithInvalidTextAreDeadLettered(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())

	lines := []string{
		`{"user_id":"ok","type":"click","properties":{"name":"caf\u00e9 😀"}}`,
		"{\"user_id\":\"u1\",\"type\":\"click\",\"properties\":{\"name\":\"\xed\xa0\x80\"}}",
		`{"user_id":"\ud800","type":"click"}`,
	}
	ack, err := js.Publish(t.Context(), "surge.in.acme.web", []byte(strings.Join(lines, "\n")))
	require.NoError(t, err)

	start(t, testConfig(ns.ClientURL()))
	waitDrained(t, js)

	var got []event.Event
	for _, m := range readEvents(t, js) {
		got = append(got, m.events...)
	}
	require.Len(t, got, 1)
	require.Equal(t, "ok", got[0].UserID)
	require.Equal(t, `{"name":"caf\u00e9 😀"}`, got[0].Properties)

	dls := readDeadLetters(t, js)
	require.Len(t, dls, 2)
	seq := strconv.FormatUint(ack.Sequence, 10)
	want := map[string]event.Problem{
		seq + "/1": {Index: 1, Field: "properties.name", Reason: "invalid UTF-8"},
		seq + "/2": {Index: 2, Field: "user_id", Reason: "invalid UTF-8"},
	}
	for _, d := range dls {
		key := d.header[streams.HeaderSourceSeq] + "/" + d.header[streams.HeaderSourceIndex]
		p, ok := want[key]
		require.True(t, ok, "unexpected dead letter %s", key)
		require.Equal(t, lines[p.Index], d.data, "the event as sent")
		require.Equal(t, "event "+strconv.Itoa(p.Index)+": "+p.Field+": invalid UTF-8", d.header[streams.HeaderReason])
		var problems []event.Problem
		require.NoError(t, json.Unmarshal([]byte(d.header[streams.HeaderProblems]), &problems))
		require.Equal(t, []event.Problem{p}, problems)
	}
}
