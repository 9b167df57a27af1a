package event_test

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/event"
)

func sampleEvents() []event.Event {
	at := time.Date(2024, 5, 1, 12, 0, 0, 123456000, time.UTC)
	return []event.Event{
		{EventID: "01HX", Tenant: "acme", UserID: "42", Type: "click", TS: at.Add(-time.Hour), ReceivedAt: at, Properties: `{"a":1}`},
		{EventID: "e2", Tenant: "acme", UserID: "ü-ser", Type: "view", TS: time.Unix(0, 0).UTC(), ReceivedAt: at, Properties: "{}"},
		{},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name   string
		events []event.Event
	}{
		{"none", []event.Event{}},
		{"some", sampleEvents()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := event.AppendEncoded(nil, tt.events)
			got, err := event.Decode(b)
			require.NoError(t, err)
			want := tt.events
			for i := range want {
				// The zero time encodes as microseconds since 1970 and
				// comes back in UTC; only that case differs.
				if want[i].TS.IsZero() {
					want[i].TS = time.UnixMicro(want[i].TS.UnixMicro()).UTC()
					want[i].ReceivedAt = want[i].TS
				}
			}
			require.Equal(t, want, got)
		})
	}
}

func TestCodecAppendsToDst(t *testing.T) {
	b := event.AppendEncoded([]byte("prefix"), sampleEvents()[:1])
	require.Equal(t, "prefix", string(b[:6]))
	got, err := event.Decode(b[6:])
	require.NoError(t, err)
	require.Equal(t, sampleEvents()[:1], got)
}

func TestCodecCorrupt(t *testing.T) {
	good := event.AppendEncoded(nil, sampleEvents()[:2])
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"wrong version", append([]byte{9}, good[1:]...)},
		{"missing count", []byte{1}},
		{"count beyond the bytes", []byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"trailing bytes", append(append([]byte(nil), good...), 0)},
		{"string length beyond the bytes", []byte{1, 1, 0x7f, 'a'}},
	}
	for i := 1; i < len(good); i++ {
		tests = append(tests, struct {
			name string
			b    []byte
		}{"truncated", good[:i]})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := event.Decode(tt.b)
			require.ErrorIs(t, err, event.ErrCorrupt)
			require.Nil(t, got)
		})
	}
}

func TestEventSize(t *testing.T) {
	e := event.Event{EventID: "id", Tenant: "t", UserID: "u", Type: "ty", Properties: "{}"}
	require.Equal(t, 2+1+1+2+2+16, e.Size())
}

func TestCodecIDGenerated(t *testing.T) {
	events := []event.Event{
		{EventID: "m-1", Tenant: "acme", UserID: "u", Type: "t", Properties: "{}"},
		{EventID: "01J0000000000000000000000", IDGenerated: true, Tenant: "acme", UserID: "u", Type: "t", Properties: "{}"},
	}
	got, err := event.Decode(event.AppendEncoded(nil, events))
	require.NoError(t, err)
	require.False(t, got[0].IDGenerated)
	require.True(t, got[1].IDGenerated)
}

// TestCodecDecodesV1 reads a list written by version 1 (no flags byte):
// messages in flight during an upgrade. Every id counts as generated, so
// none is deduplicated: at worst a duplicate passes, never a distinct
// event is dropped.
func TestCodecDecodesV1(t *testing.T) {
	at := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	// version 1, one event: id "m-1", tenant "acme", user "u", type "t",
	// ts and received_at at, properties "{}".
	v1 := []byte{1, 1, 3, 'm', '-', '1', 4, 'a', 'c', 'm', 'e', 1, 'u', 1, 't'}
	v1 = binary.AppendVarint(v1, at.UnixMicro())
	v1 = binary.AppendVarint(v1, at.UnixMicro())
	v1 = append(v1, 2, '{', '}')
	got, err := event.Decode(v1)
	require.NoError(t, err)
	require.Equal(t, []event.Event{{EventID: "m-1", IDGenerated: true, Tenant: "acme", UserID: "u", Type: "t", TS: at, ReceivedAt: at, Properties: "{}"}}, got)
}

func TestCodecUnknownFlags(t *testing.T) {
	b := event.AppendEncoded(nil, sampleEvents()[:1])
	b[2] = 0x80 // the first event's flags
	_, err := event.Decode(b)
	require.ErrorIs(t, err, event.ErrCorrupt)
}

// BenchmarkDecode decodes a partitioner's EVENTS group of 50 events like
// the bench's (a ULID, the default tenant, a user, a type, three
// properties), as the batcher does for every message.
func BenchmarkDecode(b *testing.B) {
	events := make([]event.Event, 50)
	ts := time.UnixMicro(1760000000123456).UTC()
	for i := range events {
		events[i] = event.Event{
			EventID: fmt.Sprintf("01JABCDEFGHJKMNPQRSTV%05d", i), Tenant: "default", UserID: fmt.Sprintf("user-%d", i*7919%100000),
			Type: "page_view", TS: ts, ReceivedAt: ts, Properties: `{"path":"/pricing","ref":"https://example.com/a","ms":123}`,
		}
	}
	data := event.AppendEncoded(nil, events)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := event.Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
