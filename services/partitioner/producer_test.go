package partitioner

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

type deadLetter struct {
	subject string
	header  map[string]string
	data    string
}

func readDeadLetters(t *testing.T, js jetstream.JetStream) []deadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, streams.DeadLetter)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	var out []deadLetter
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := st.GetMsg(ctx, seq)
		require.NoError(t, err)
		h := map[string]string{}
		for k := range raw.Header {
			h[k] = raw.Header.Get(k)
		}
		out = append(out, deadLetter{subject: raw.Subject, header: h, data: string(raw.Data)})
	}
	return out
}

// TestProducerMessages feeds INGEST what NATS producers publish: valid
// and invalid events mixed in one message, in every accepted shape, and
// a message that is not JSON at all.
func TestProducerMessages(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	mixed := strings.Join([]string{
		`{"user_id":"u1","type":"click","tenant":"evil"}`,
		`{"user_id":"u2","type":"click"}`,
		`{"user_id":"u3"}`,
		`{"event_id":"given","user_id":4,"type":"view","ts":"2026-01-02T03:04:05Z","properties":{"a":1}}`,
	}, "\n")
	publish := func(subject, body string) *jetstream.PubAck {
		ack, err := js.Publish(ctx, subject, []byte(body))
		require.NoError(t, err)
		return ack
	}
	mixedAck := publish("surge.in.acme.web", mixed)
	arrayAck := publish("surge.in.globex.app.v1", `[{"user_id":"g1","type":"open"},{"user_id":"g2","type":"close"}]`)
	singleAck := publish("surge.in.acme", "{\n  \"user_id\": \"s1\",\n  \"type\": \"pretty\"\n}\n")
	junkAck := publish("surge.in.acme.web", "hello")

	p := start(t, testConfig(ns.ClientURL()))
	waitDrained(t, js)

	got := map[string]event.Event{}
	for _, m := range readEvents(t, js) {
		for _, e := range m.events {
			_, dup := got[e.UserID]
			require.False(t, dup, "event of %s twice", e.UserID)
			got[e.UserID] = e
		}
	}
	require.Len(t, got, 5, "u2, 4, g1, g2 and s1 are valid")
	for _, user := range []string{"u2", "4", "s1", "g1", "g2"} {
		require.Contains(t, got, user)
	}

	u2 := got["u2"]
	require.Equal(t, "acme", u2.Tenant, "the tenant comes from the subject")
	require.Equal(t, "click", u2.Type)
	require.Equal(t, "{}", u2.Properties)
	require.Equal(t, u2.ReceivedAt, u2.TS)
	require.WithinDuration(t, time.Now(), u2.ReceivedAt, time.Minute)
	require.Equal(t, event.DerivedID(u2.ReceivedAt, mixedAck.Sequence, 1), u2.EventID, "ids derive from the INGEST message")
	given := got["4"]
	require.Equal(t, "given", given.EventID)
	require.Equal(t, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), given.TS)
	require.Equal(t, `{"a":1}`, given.Properties)
	require.Equal(t, "globex", got["g1"].Tenant)
	require.Equal(t, event.DerivedID(got["g2"].ReceivedAt, arrayAck.Sequence, 1), got["g2"].EventID)
	require.Equal(t, "acme", got["s1"].Tenant)
	require.Equal(t, event.DerivedID(got["s1"].ReceivedAt, singleAck.Sequence, 0), got["s1"].EventID)

	dls := readDeadLetters(t, js)
	require.Len(t, dls, 3)
	bySource := map[string]deadLetter{}
	for _, d := range dls {
		require.Equal(t, streams.InvalidSubject("acme"), d.subject)
		bySource[d.header[streams.HeaderSourceSeq]+"/"+d.header[streams.HeaderSourceIndex]] = d
	}
	mixedSeq := strconv.FormatUint(mixedAck.Sequence, 10)
	evil := bySource[mixedSeq+"/0"]
	require.Equal(t, `{"user_id":"u1","type":"click","tenant":"evil"}`, evil.data)
	require.Equal(t, "event 0: tenant: unknown field", evil.header[streams.HeaderReason])
	require.Equal(t, "surge.in.acme.web", evil.header[streams.HeaderSource])
	require.Equal(t, "acme", evil.header[streams.HeaderTenant])
	require.Equal(t, "partitioner:surge.in.acme.web:"+mixedSeq+":0", evil.header[jetstream.MsgIDHeader])
	var problems []event.Problem
	require.NoError(t, json.Unmarshal([]byte(evil.header[streams.HeaderProblems]), &problems))
	require.Equal(t, []event.Problem{{Index: 0, Field: "tenant", Reason: "unknown field"}}, problems)
	u3 := bySource[mixedSeq+"/2"]
	require.Equal(t, `{"user_id":"u3"}`, u3.data)
	require.Equal(t, "event 2: type: required", u3.header[streams.HeaderReason])
	junk := bySource[strconv.FormatUint(junkAck.Sequence, 10)+"/"]
	require.Equal(t, "hello", junk.data)
	require.Contains(t, junk.header[streams.HeaderReason], "not JSON")
	require.Equal(t, "partitioner:surge.in.acme.web:"+strconv.FormatUint(junkAck.Sequence, 10), junk.header[jetstream.MsgIDHeader])

	require.Eventually(t, func() bool { return messagesMetric(p, outcomeAcked) == 3 }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, 1, messagesMetric(p, outcomeDeadLetter))
	require.Equal(t, 2.0, testutil.ToFloat64(p.m.invalid))
}
