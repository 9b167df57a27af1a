package event_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(`[{"user_id":"u","type":"a","ts":"2024-05-01T12:00:00Z","properties":{"a":[1,2]}}]`), false)
	f.Add([]byte(`{"user_id":42,"type":"a","event_id":"x"}`), false)
	f.Add([]byte("{\"user_id\":1,\"type\":\"a\"}\n{\"user_id\":\"2\",\"type\":\"b\"}\n"), true)
	f.Add([]byte(`[{"user_id":null},7,"x",[]]`), false)
	f.Add([]byte(`[`), false)
	f.Fuzz(func(t *testing.T, body []byte, ndjson bool) {
		format := event.FormatJSON
		if ndjson {
			format = event.FormatNDJSON
		}
		p := &event.Parser{Limits: event.Limits{MaxEvents: 1000, MaxEventBytes: 4096}}
		events, err := p.ParseBytes(body, format, "fuzz")
		if err != nil {
			require.Nil(t, events)
			return
		}
		require.NotEmpty(t, events)
		for _, e := range events {
			require.NotEmpty(t, e.EventID)
			require.NotEmpty(t, e.UserID)
			require.NotEmpty(t, e.Type)
			require.Equal(t, "fuzz", e.Tenant)
			require.Equal(t, byte('{'), e.Properties[0])
		}
		got, err := event.Decode(event.AppendEncoded(nil, events))
		require.NoError(t, err)
		require.Equal(t, events, got)
	})
}

func FuzzDecode(f *testing.F) {
	at := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	f.Add(event.AppendEncoded(nil, []event.Event{{EventID: "e", Tenant: "t", UserID: "u", Type: "a", TS: at, ReceivedAt: at, Properties: "{}"}}))
	f.Add([]byte{1, 0})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := event.Decode(b)
		if err != nil {
			require.ErrorIs(t, err, event.ErrCorrupt)
			return
		}
		// What decodes re-encodes to an equivalent form.
		again, err := event.Decode(event.AppendEncoded(nil, events))
		require.NoError(t, err)
		require.Equal(t, events, again)
	})
}
