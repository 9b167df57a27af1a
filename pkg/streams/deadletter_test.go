package streams

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

func TestDeadLetterMsg(t *testing.T) {
	tests := []struct {
		name    string
		dl      DeadLetterMsg
		id      string
		headers map[string]string
	}{
		{
			name: "whole message",
			dl:   DeadLetterMsg{Service: "batcher", Subject: DeadLetterSubject("batcher", 3), Data: []byte("x"), Reason: "decode: bad\nmagic", Source: "events.shard.3", SourceSeq: 42},
			id:   "batcher:events.shard.3:42",
			headers: map[string]string{
				HeaderReason: "decode: bad magic", HeaderSource: "events.shard.3", HeaderSourceSeq: "42",
				HeaderSourceIndex: "", HeaderBatchID: "", HeaderTenant: "",
			},
		},
		{
			name: "one event of a producer message",
			dl:   DeadLetterMsg{Service: "partitioner", Subject: InvalidSubject("acme"), Reason: "event 0: type: required", Source: "surge.in.acme.x", SourceSeq: 7, Index: 0, HasIndex: true, Tenant: "acme", Problems: `[{"index":0}]`},
			id:   "partitioner:surge.in.acme.x:7:0",
			headers: map[string]string{
				HeaderSourceIndex: "0", HeaderTenant: "acme", HeaderProblems: `[{"index":0}]`,
			},
		},
		{
			name:    "batch",
			dl:      DeadLetterMsg{Service: "sink", Subject: DeadLetterSubject("sink", 1), Reason: "wrong shard", Source: "batches.shard.1", SourceSeq: 9, BatchID: "1:5-8"},
			id:      "sink:batches.shard.1:9",
			headers: map[string]string{HeaderBatchID: "1:5-8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.dl.Msg()
			require.Equal(t, tt.dl.Subject, m.Subject)
			require.Equal(t, tt.id, m.Header.Get(jetstream.MsgIDHeader))
			for k, v := range tt.headers {
				require.Equal(t, v, m.Header.Get(k), k)
			}
		})
	}
}

func TestHeaderValue(t *testing.T) {
	require.Equal(t, "a b c", HeaderValue("a\nb\tc"))
	long := strings.Repeat("é", MaxReasonLen) // 2 bytes each
	got := HeaderValue(long)
	require.Len(t, got, MaxReasonLen)
	require.True(t, strings.HasSuffix(got, "é"), "cut on a character boundary")
	odd := "x" + long
	got = HeaderValue(odd)
	require.Len(t, got, MaxReasonLen-1)
}
