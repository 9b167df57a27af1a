package ingest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
)

// track is a small Segment track with a messageId.
func track(id string) string {
	return `{"type":"track","event":"e","userId":"u","messageId":"` + id + `"}`
}

// bigTrack is a track of about n bytes, all in one property, its messageId
// after the property, where a reader meets it last.
func bigTrack(id string, n int) string {
	return `{"type":"track","event":"big","userId":"u","properties":{"blob":"` + strings.Repeat("x", n) + `"},"messageId":"` + id + `"}`
}

func batchBody(msgs ...string) string {
	return `{"batch":[` + strings.Join(msgs, ",") + `],"sentAt":"2026-05-01T10:00:00Z","context":{"library":{"name":"test"}}}`
}

// TestReadSegmentBatch reads bodies message by message: the counts kept,
// the messages refused as too large, and what refuses a whole body.
func TestReadSegmentBatch(t *testing.T) {
	limits := batchLimits{messages: 5, messageBytes: 200, keptBytes: 250}
	tests := []struct {
		name     string
		body     string
		status   int    // 0: read
		message  string // part of the refusal
		kept     []string
		tooLarge map[int]string // index -> part of the reason
	}{
		{name: "small messages", body: batchBody(track("a"), track("b")), kept: []string{track("a"), track("b")}},
		{name: "huge messages are excerpts", body: batchBody(track("a"), bigTrack("big1", 5000), track("b"), bigTrack("big2", 300), `"a lone string of `+strings.Repeat("y", 300)+`"`),
			kept: []string{track("a"), track("b")},
			tooLarge: map[int]string{
				1: fmt.Sprintf(`message_too_large: messageId "big1" is %d bytes, more than max_event_bytes 200`, len(bigTrack("big1", 5000))),
				3: fmt.Sprintf(`messageId "big2" is %d bytes`, len(bigTrack("big2", 300))),
				4: `message 4 is 319 bytes`,
			}},
		{name: "an empty batch", body: `{"batch":[]}`},
		{name: "keys match as json.Unmarshal matches them", body: `{"Batch":[` + track("a") + `],"WRITEKEY":"k","unknown":{"x":[1,2]}}`, kept: []string{track("a")}},
		{name: "the last batch wins", body: `{"batch":[` + track("a") + `],"batch":[` + track("b") + `]}`, kept: []string{track("b")}},
		{name: "malformed mid-array", body: `{"batch":[` + track("a") + `,` + bigTrack("big", 5000) + `,{"type":]}`, status: 400, message: "invalid character ']'"},
		{name: "cut short", body: `{"batch":[` + track("a") + `,` + bigTrack("big", 5000), status: 400, message: "unexpected EOF"},
		{name: "not an object", body: `[` + track("a") + `]`, status: 400, message: "not an object"},
		{name: "more after the object", body: `{"batch":[]} {}`, status: 400, message: "more after the object"},
		{name: "batch not an array", body: `{"batch":{}}`, status: 400, message: "batch must be a JSON array"},
		{name: "writeKey not a string", body: `{"writeKey":5,"batch":[]}`, status: 400, message: "cannot unmarshal number"},
		{name: "too many messages, huge ones counted", body: batchBody(track("1"), track("2"), track("3"), track("4"), bigTrack("5", 300), track("6")),
			status: 413, message: "too many events in request: limit is 5"},
		{name: "the small messages alone past keptBytes", body: batchBody(track("1"), track("2"), track("3"), track("4"), track("5")),
			status: 413, message: "take more than 250 bytes together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte a read: the decoder meets every boundary mid-token.
			b, rep := readSegmentBatch(iotest.OneByteReader(strings.NewReader(tt.body)), limits)
			if tt.status != 0 {
				require.Equal(t, tt.status, rep.status, rep.message)
				require.Contains(t, rep.message, tt.message)
				return
			}
			require.Zero(t, rep.status, rep.message)
			var kept []string
			for i, raw := range b.req.Batch {
				if _, ok := b.tooLarge[i]; !ok {
					kept = append(kept, string(raw))
				}
			}
			require.Equal(t, tt.kept, kept)
			require.Len(t, b.tooLarge, len(tt.tooLarge))
			for i, want := range tt.tooLarge {
				m := b.tooLarge[i]
				require.Len(t, m.Problems, 1)
				require.Contains(t, m.Problems[0].Reason, want)
				require.Equal(t, i, m.Problems[0].Index)
				require.LessOrEqual(t, len(b.req.Batch[i]), excerptBytes, "only an excerpt is kept")
				require.Contains(t, tt.body, string(b.req.Batch[i]), "the excerpt is the message's start")
			}
		})
	}
}

// TestSegmentBatchPastBodyLimit: over HTTP, a batch past max_body_bytes
// because of huge messages stores its small ones, dead-letters the huge
// ones by messageId and size, and answers 200, gzipped or not, once;
// past segment_max_body_bytes, or malformed after a huge message, it is
// refused whole and stores nothing.
func TestSegmentBatchPastBodyLimit(t *testing.T) {
	h := start(t, func(c *Config) {
		c.Ingest.MaxBodyBytes = 64 << 10
		c.Ingest.MaxEventBytes = 8 << 10
		c.Ingest.SegmentMaxBodyBytes = 1 << 20
	})
	small := func(prefix string) []string {
		var out []string
		for i := range 5 {
			out = append(out, track(fmt.Sprintf("%s-%d", prefix, i)))
		}
		return out
	}
	// 200 KiB: past max_body_bytes, within the ceiling.
	withBig := func(prefix string) string {
		msgs := small(prefix)
		return batchBody(append(msgs[:2:2], append([]string{bigTrack(prefix+"-big", 200<<10)}, msgs[2:]...)...)...)
	}
	seq := uint64(0) // dead letters read so far
	check := func(prefix string, status int, body string) {
		t.Helper()
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, success, body)
		msgs := h.stored()
		events := decode(t, msgs[len(msgs)-1])
		var ids []string
		for _, e := range events {
			ids = append(ids, e.EventID)
		}
		require.Equal(t, []string{prefix + "-0", prefix + "-1", prefix + "-2", prefix + "-3", prefix + "-4"}, ids)
		dls := h.deadLetters()
		require.Len(t, dls, int(seq)+1)
		dl := dls[seq]
		seq++
		require.Equal(t, "deadletter.ingest.invalid.default", dl.Subject)
		require.Equal(t, "2", dl.Header.Get(streams.HeaderSourceIndex))
		require.Regexp(t, `^message_too_large: messageId "`+prefix+`-big" is 2048\d\d bytes, more than max_event_bytes 8192`, dl.Header.Get(streams.HeaderReason))
		require.Len(t, dl.Data, excerptBytes)
		require.True(t, strings.HasPrefix(withBig(prefix)[strings.Index(withBig(prefix), `{"type":"track","event":"big"`):], string(dl.Data)))
	}

	status, _, body := h.segmentPost("/v1/batch", nil, strings.NewReader(withBig("plain")))
	check("plain", status, body)
	// The SDK's retry is the same messages: JetStream drops both copies.
	status, _, body = h.segmentPost("/v1/batch", nil, strings.NewReader(withBig("plain")))
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, h.stored(), 1)
	require.Len(t, h.deadLetters(), 1)

	status, _, body = h.segmentPost("/v1/batch", map[string]string{"Content-Encoding": "gzip"}, gzipped(t, withBig("gzip")))
	check("gzip", status, body)
	require.Len(t, h.stored(), 2)

	// Refused whole: nothing more stored, no dead letter.
	overCeiling := batchBody(append(small("over"), bigTrack("over-big", 1<<20))...)
	refused := []struct {
		name    string
		headers map[string]string
		body    string
		gzip    bool
		status  int
		message string
	}{
		{"past the ceiling", nil, overCeiling, false, 413, "body exceeds 1048576 bytes (after decompression)"},
		{"past the ceiling once decompressed", map[string]string{"Content-Encoding": "gzip"}, overCeiling, true, 413, "body exceeds 1048576 bytes"},
		{"malformed after a huge message", nil, strings.TrimSuffix(withBig("bad"), "}") + `,"x":}`, false, 400, "invalid character '}'"},
		{"small messages past max_body_bytes", nil, batchBody(strings.Split(strings.Repeat(track("many")+"\n", 2000), "\n")[:1999]...), false, 413,
			"take more than 65536 bytes together"},
		{"a call path past max_body_bytes", nil, bigTrack("call", 100<<10), false, 413, "body exceeds 65536 bytes"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			path := "/v1/batch"
			if strings.HasPrefix(tt.name, "a call path") {
				path = "/v1/t"
			}
			var status int
			var body string
			if tt.gzip {
				status, _, body = h.segmentPost(path, tt.headers, gzipped(t, tt.body))
			} else {
				status, _, body = h.segmentPost(path, tt.headers, strings.NewReader(tt.body))
			}
			require.Equal(t, tt.status, status, body)
			require.Contains(t, body, tt.message)
			require.Len(t, h.stored(), 2)
			require.Len(t, h.deadLetters(), 2)
		})
	}
}
