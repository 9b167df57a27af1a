package observability

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/surge-events/surge/services/sink"
	"github.com/surge-events/surge/tools/stack"
)

// spans indexes the recorded spans.
type spans []sdktrace.ReadOnlySpan

func (ss spans) children(parent trace.SpanID, kind trace.SpanKind) spans {
	var out spans
	for _, s := range ss {
		if s.Parent().SpanID() == parent && s.SpanKind() == kind {
			out = append(out, s)
		}
	}
	return out
}

func (ss spans) ofTrace(id trace.TraceID) spans {
	var out spans
	for _, s := range ss {
		if s.SpanContext().TraceID() == id {
			out = append(out, s)
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

func traceparent(tid trace.TraceID, sampled bool) string {
	flags := "00"
	if sampled {
		flags = "01"
	}
	return "00-" + tid.String() + "-00f067aa0ba902b7-" + flags
}

// TestTraceFromRequestToInsert sends one sampled request among unsampled
// ones and walks its trace: the ingest server span, its publish, the
// partitioner's consume span and per-shard publishes, the batch spans
// linked to them and the sink's insert span of each batch, whose batch id
// holds the event and whose query_id is in ClickHouse's system.query_log.
// The unsampled requests leave no span anywhere, and the debug log lines
// of the traced batches carry its trace id.
func TestTraceFromRequestToInsert(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	// t.Context() has ended when cleanups run.
	t.Cleanup(func() { require.NoError(t, tp.Shutdown(context.Background())) })
	core, logs := observer.New(zapcore.DebugLevel)
	st := startStack(t, stack.Options{TracerProvider: tp, Logger: zap.New(core)})

	sampled := trace.TraceID{0x5a, 0x3e, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}
	body, ids := events("traced", 6)
	// Unsampled requests before and after, so batches mix both kinds.
	for i := range 3 {
		b, _ := events("before-"+strconv.Itoa(i), 10)
		require.Equal(t, http.StatusAccepted, post(t, st, b, "traceparent", traceparent(trace.TraceID{0x0b, byte(i), 1}, false)))
	}
	require.Equal(t, http.StatusAccepted, post(t, st, body, "traceparent", traceparent(sampled, true)))
	for i := range 3 {
		b, _ := events("after-"+strconv.Itoa(i), 10)
		require.Equal(t, http.StatusAccepted, post(t, st, b, "traceparent", traceparent(trace.TraceID{0x0a, byte(i), 1}, false)))
	}
	waitInserted(t, st, 66)

	// Where each traced event landed: shard and EVENTS sequence.
	type landed struct {
		shard int
		seq   uint64
	}
	where := map[string]landed{}
	servers := st.ClickHouse.Addrs()
	for _, addr := range servers {
		ch := openClickHouse(t, addr)
		rows, err := ch.Query(t.Context(),
			fmt.Sprintf("SELECT event_id, shard, seq FROM %s.events_local WHERE event_id LIKE 'id-traced-%%'", st.Database))
		require.NoError(t, err)
		for rows.Next() {
			var id string
			var sh uint16
			var seq uint64
			require.NoError(t, rows.Scan(&id, &sh, &seq))
			where[id] = landed{int(sh), seq}
		}
		require.NoError(t, rows.Err())
		rows.Close()
		require.NoError(t, ch.Close())
	}
	require.Len(t, where, len(ids))
	traceShards := map[int]bool{}
	for _, l := range where {
		traceShards[l.shard] = true
	}

	// Spans end after the acks: the insert's after the rows are counted,
	// the partitioner's once its whole fetch is settled.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		n := map[string]int{}
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID() == sampled {
				n[strings.Fields(s.Name())[0]]++
			}
		}
		assert.Equal(c, map[string]int{"sink": len(traceShards), "partition": 1, "publish": 1 + len(traceShards)},
			map[string]int{"sink": n["sink"], "partition": n["partition"], "publish": n["publish"]}, "ended spans of the sampled trace")
	}, 10*time.Second, 10*time.Millisecond)
	all := spans(rec.Ended())

	// ingest: a server span under the caller's span, and its publish.
	tr := all.ofTrace(sampled)
	server := tr.children(trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}, trace.SpanKindServer)
	require.Len(t, server, 1)
	require.Equal(t, "POST /v1/events", server[0].Name())
	require.Equal(t, int64(http.StatusAccepted), attr(server[0], "http.response.status_code").AsInt64())
	publish := tr.children(server[0].SpanContext().SpanID(), trace.SpanKindProducer)
	require.Len(t, publish, 1)

	// partitioner: one consume span continuing the trace, one publish per shard.
	partition := tr.children(publish[0].SpanContext().SpanID(), trace.SpanKindConsumer)
	require.Len(t, partition, 1)
	require.Equal(t, "partition", partition[0].Name())
	shardPublishes := tr.children(partition[0].SpanContext().SpanID(), trace.SpanKindProducer)
	require.Len(t, shardPublishes, len(traceShards))

	for _, pub := range shardPublishes {
		k := int(attr(pub, "surge.shard").AsInt64())
		require.True(t, traceShards[k], "publish to shard %d, which holds none of the events", k)
		require.Equal(t, "publish events.shard."+strconv.Itoa(k), pub.Name())

		// batcher: the batch span links to the shard publish (and, as the
		// first sampled message of its batch, is its child).
		var batchSpan sdktrace.ReadOnlySpan
		for _, s := range all {
			if s.Name() != "batch" {
				continue
			}
			for _, l := range s.Links() {
				if l.SpanContext.SpanID() == pub.SpanContext().SpanID() {
					require.Nil(t, batchSpan, "two batches link to one message")
					batchSpan = s
				}
			}
		}
		require.NotNil(t, batchSpan, "no batch span links to the publish to shard %d", k)
		require.Equal(t, pub.SpanContext().SpanID(), batchSpan.Parent().SpanID())
		require.Len(t, batchSpan.Links(), 1, "the unsampled messages of the batch are not linked")
		batchID := attr(batchSpan, "surge.batch.id").AsString()

		// The batch holds the traced events of shard k.
		first, last := parseBatchID(t, batchID, k)
		for id, l := range where {
			if l.shard == k {
				require.True(t, l.seq >= first && l.seq <= last, "%s (seq %d) outside batch %s", id, l.seq, batchID)
			}
		}

		// sink: the insert span is the batch span's child.
		inserts := tr.children(batchSpan.SpanContext().SpanID(), trace.SpanKindClient)
		require.Len(t, inserts, 1)
		ins := inserts[0]
		require.Equal(t, "sink insert", ins.Name())
		require.Equal(t, "clickhouse", attr(ins, "db.system").AsString())
		require.Equal(t, batchID, attr(ins, "surge.batch_id").AsString())
		require.Equal(t, int64(k), attr(ins, "surge.shard").AsInt64())
		require.Equal(t, attr(batchSpan, "surge.batch.rows").AsInt64(), attr(ins, "surge.rows").AsInt64())
		require.Equal(t, attr(batchSpan, "surge.batch.bytes").AsInt64(), attr(ins, "surge.bytes").AsInt64())
		server := servers[k%len(servers)]
		require.Equal(t, server, attr(ins, "server.address").AsString())
		queryID := "surge-sink-" + batchID + "-" + sampled.String() + "-1"
		require.Equal(t, queryID, attr(ins, sink.AttrQueryID).AsString())

		// The insert is in system.query_log under that id (type 2 is
		// QueryFinish, a number on old servers and an enum on new ones).
		ch := openClickHouse(t, server)
		require.NoError(t, ch.Exec(t.Context(), "SYSTEM FLUSH LOGS"))
		var n uint64
		require.NoError(t, ch.QueryRow(t.Context(),
			"SELECT count() FROM system.query_log WHERE query_id = ? AND toUInt8(type) = 2 AND query LIKE 'INSERT INTO%'", queryID).Scan(&n))
		require.Equal(t, uint64(1), n, "insert %s in system.query_log", queryID)
		require.NoError(t, ch.Close()) // an open connection delays the server's stop

		// The batch's log lines carry the trace id.
		for _, msg := range []string{"batch published", "batch inserted"} {
			entries := logs.FilterMessage(msg).FilterField(zap.String("batch_id", batchID)).All()
			require.Len(t, entries, 1, msg)
			ctx := entries[0].ContextMap()
			require.Equal(t, sampled.String(), ctx["trace_id"], msg)
			require.NotEmpty(t, ctx["span_id"], msg)
		}
	}

	// Nothing but the sampled request's trace was recorded.
	require.NoError(t, st.Stop()) // every span has ended
	for _, s := range rec.Ended() {
		require.Equal(t, sampled, s.SpanContext().TraceID(), "span %q of an unsampled request", s.Name())
	}
	// Every batch log line belongs to a trace, sampled or not.
	batchLines := logs.FilterMessage("batch published").All()
	require.NotEmpty(t, batchLines)
	for _, e := range append(batchLines, logs.FilterMessage("batch inserted").All()...) {
		require.Len(t, e.ContextMap()["trace_id"], 32, "%s: %v", e.Message, e.ContextMap())
	}
}

// parseBatchID splits <shard>:<first>-<last>.
func parseBatchID(t *testing.T, id string, shard int) (first, last uint64) {
	t.Helper()
	prefix := strconv.Itoa(shard) + ":"
	require.True(t, strings.HasPrefix(id, prefix), id)
	a, b, ok := strings.Cut(strings.TrimPrefix(id, prefix), "-")
	require.True(t, ok, id)
	first, err := strconv.ParseUint(a, 10, 64)
	require.NoError(t, err)
	last, err = strconv.ParseUint(b, 10, 64)
	require.NoError(t, err)
	return first, last
}
