package sink

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
)

func TestErasureWhere(t *testing.T) {
	before := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	got := where([]*erasure.Request{
		{Tenant: "acme", Users: []string{"u1", `o'brien\`}},
		{Tenant: "beta", Users: []string{"42"}, Before: before},
	})
	require.Equal(t, `(tenant = 'acme' AND user_id IN ('u1','o\'brien\\')) OR `+
		`(tenant = 'beta' AND user_id IN ('42') AND ts < toDateTime(1767323045))`, got)
}

func TestErasureDeadLetters(t *testing.T) {
	cut := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m := newMatcher([]*erasure.Request{
		{ID: "r1", Tenant: "acme", Users: []string{"gone"}},
		{ID: "r2", Tenant: "acme", Users: []string{"old"}, Before: cut},
	})
	ev := func(user string, ts time.Time) event.Event {
		return event.Event{EventID: user + ts.String(), Tenant: "acme", UserID: user, Type: "t", TS: ts, ReceivedAt: ts, Properties: "{}"}
	}
	early, late := cut.Add(-time.Hour), cut.Add(time.Hour)
	msg := func(source string, data []byte, hdr ...string) *jetstream.RawStreamMsg {
		h := nats.Header{}
		h.Set(streams.HeaderSource, source)
		for i := 0; i < len(hdr); i += 2 {
			h.Set(hdr[i], hdr[i+1])
		}
		return &jetstream.RawStreamMsg{Subject: "deadletter.x", Header: h, Data: data}
	}
	users := func(t *testing.T, rest []byte) []string {
		evs, err := event.Decode(rest)
		require.NoError(t, err)
		var out []string
		for _, e := range evs {
			out = append(out, e.UserID)
		}
		return out
	}

	t.Run("events, mixed", func(t *testing.T) {
		hit, rest, err := m.deadLetter(msg("events.shard.1", event.AppendEncoded(nil, []event.Event{
			ev("gone", late), ev("keep", late), ev("old", early), ev("old", late)})))
		require.NoError(t, err)
		require.Equal(t, map[string]bool{"r1": true, "r2": true}, hit)
		require.Equal(t, []string{"keep", "old"}, users(t, rest), "old's event after the cut stays")
	})
	t.Run("events, only erased", func(t *testing.T) {
		hit, rest, err := m.deadLetter(msg("ingest.acme", event.AppendEncoded(nil, []event.Event{ev("gone", late)})))
		require.NoError(t, err)
		require.Equal(t, map[string]bool{"r1": true}, hit)
		require.Nil(t, rest, "deleted whole")
	})
	t.Run("events, none", func(t *testing.T) {
		hit, _, err := m.deadLetter(msg("events.shard.1", event.AppendEncoded(nil, []event.Event{ev("keep", late)})))
		require.NoError(t, err)
		require.Empty(t, hit)
	})
	t.Run("batch, mixed", func(t *testing.T) {
		b := &batch.Batch{Shard: 2}
		b.Append(10, []event.Event{ev("gone", late), ev("keep", late)})
		hit, rest, err := m.deadLetter(msg("batches.shard.2", batch.Encode(b)))
		require.NoError(t, err)
		require.Equal(t, map[string]bool{"r1": true}, hit)
		got, err := batch.Decode(rest)
		require.NoError(t, err)
		require.Equal(t, []string{"keep"}, got.UserID)
		require.Equal(t, b.ID(), got.ID(), "it still names its messages")
	})
	t.Run("item", func(t *testing.T) {
		hit, rest, err := m.deadLetter(msg("", []byte(`{"userId":"gone","event":""}`), streams.HeaderTenant, "acme", streams.HeaderSourceIndex, "3"))
		require.NoError(t, err)
		require.Equal(t, map[string]bool{"r1": true}, hit)
		require.Nil(t, rest)
	})
	t.Run("item of another tenant", func(t *testing.T) {
		hit, _, err := m.deadLetter(msg("", []byte(`{"userId":"gone"}`), streams.HeaderTenant, "beta", streams.HeaderSourceIndex, "3"))
		require.NoError(t, err)
		require.Empty(t, hit)
	})
	t.Run("malformed producer message", func(t *testing.T) {
		hit, _, err := m.deadLetter(msg("surge.in.acme.x", []byte(`[{"user_id":"gone",`), streams.HeaderTenant, "acme"))
		require.NoError(t, err)
		require.Equal(t, map[string]bool{"r1": true}, hit)
	})
}
