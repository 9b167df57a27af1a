package sdk

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/services/ingest"
)

// TestSDKLargeMessages: a batch that one huge message takes past ingest's
// max_body_bytes (4 MiB) stores the other messages and dead-letters the
// huge one, answered 200, so the SDK loses nothing valid; a body past
// segment_max_body_bytes (64 MiB) is refused whole.
func TestSDKLargeMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, ClickHouse and node")
	}
	sdkDir(t)
	var tenants []string
	for _, sdk := range sdks {
		tenants = append(tenants, sdk+"-large")
	}
	p := startPipeline(t, append(tenants, "ceiling")...)
	for _, sdk := range sdks {
		t.Run(sdk+": five small tracks and one of 6 MB", func(t *testing.T) { testLargeMessage(t, p, sdk) })
	}
	t.Run("a body past the ceiling stores nothing", func(t *testing.T) { testPastCeiling(t, p) })
}

// testLargeMessage sends five small tracks and, among them, one whose
// property is 6 MB of ASCII without an "i": analytics-node's size check
// counts percent-escapes and the letter "i", not bytes, so it sends it;
// rudder-sdk-node checks no message size at all (and gzips it).
func testLargeMessage(t *testing.T, p *pipeline, sdk string) {
	tenant := sdk + "-large"
	big := sdk + "-large-big"
	var msgs []map[string]any
	var small []string
	for i := range 6 {
		id := fmt.Sprintf("%s-large-%d", sdk, i)
		m := map[string]any{"type": "track", "messageId": id, "userId": "u", "event": "Small"}
		if i == 2 {
			id = big
			m["messageId"], m["event"] = big, "Huge"
			m["properties"] = map[string]any{"blob": strings.Repeat("x", 6<<20)}
		} else {
			small = append(small, id)
		}
		msgs = append(msgs, m)
	}
	o := send(t, job{SDK: sdk, Host: p.st.IngestURL, WriteKey: writeKey(tenant), Messages: msgs, FlushAt: 6})
	require.Equal(t, outcome{Delivered: 6, Errors: []string{}}, o, "the SDK sees every message accepted")

	rows := p.rows(t, tenant)
	require.ElementsMatch(t, small, keys(rows))
	dls := p.deadLetters(t, tenant)
	require.Len(t, dls, 1)
	reason := dls[0].Header.Get(streams.HeaderReason)
	require.Regexp(t, `^message_too_large: messageId "`+big+`" is 629\d{4} bytes, more than max_event_bytes 65536`, reason)
	require.Len(t, dls[0].Data, 4<<10, "an excerpt, not the message")
	require.Contains(t, string(dls[0].Data), `"blob":"xxxx`)
	if sdk == "segment" { // RudderStack sends its first message alone, then [1, 2] and [3, 4, 5]
		require.Equal(t, "2", dls[0].Header.Get(streams.HeaderSourceIndex))
	}
}

// testPastCeiling sends, with a plain HTTP client, a batch of a small
// track and one message that takes it past segment_max_body_bytes: 413,
// nothing stored, nothing dead-lettered.
func testPastCeiling(t *testing.T, p *pipeline) {
	ceiling := ingest.DefaultConfig().Ingest.SegmentMaxBodyBytes
	seq := p.ingestSeq(t)
	body := `{"batch":[{"type":"track","event":"Small","userId":"u","messageId":"c-0"},` +
		`{"type":"track","event":"Huge","userId":"u","messageId":"c-1","properties":{"blob":"` + strings.Repeat("x", int(ceiling)) + `"}}]}`
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, p.st.IngestURL+"/v1/batch", strings.NewReader(body))
	require.NoError(t, err)
	req.SetBasicAuth(writeKey("ceiling"), "")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	answer, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, "%s", answer)
	require.Contains(t, string(answer), fmt.Sprintf("body exceeds %d bytes", ceiling))

	require.Equal(t, seq, p.ingestSeq(t), "nothing stored")
	require.Empty(t, p.deadLetters(t, "ceiling"))
	require.Empty(t, p.rows(t, "ceiling"))
}
