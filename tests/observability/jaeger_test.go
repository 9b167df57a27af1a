package observability

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"

	"github.com/surge-events/surge/pkg/telemetry"
	"github.com/surge-events/surge/pkg/testkit/jaeger"
	"github.com/surge-events/surge/pkg/testkit/jaeger/jaegertest"
	"github.com/surge-events/surge/services/sink"
	"github.com/surge-events/surge/tools/stack"
)

// TestJaegerShowsTheTrace runs the pipeline with each service's spans
// exported over OTLP to a real Jaeger, as `surge up --jaeger` does, and
// reads one sampled request's trace back from Jaeger's query API: six
// spans from the four services, the batch span linked to the shard
// publish it follows from, the insert span naming its ClickHouse query.
// Then Jaeger stops, and the events sent while it is down all land in
// ClickHouse, exactly once: spans are dropped, events never.
func TestJaegerShowsTheTrace(t *testing.T) {
	j := jaegertest.Start(t)
	setOTEL(t, j.OTLPHTTPEndpoint(), "http/protobuf")
	// An export to a Jaeger that is down gives up after a second, so the
	// providers' shutdown at the end does not wait out the default 10 s.
	t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")

	providers := map[string]trace.TracerProvider{}
	for _, name := range []string{"ingest", "partitioner", "batcher", "sink"} {
		tp, shutdown, err := telemetry.SetupTracing(t.Context(), "surge-"+name)
		require.NoError(t, err)
		t.Cleanup(func() {
			// The spans of the events sent while Jaeger was down may
			// still be queued: their export fails, which is the point.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := shutdown(ctx); err != nil {
				t.Logf("surge-%s tracer shutdown (Jaeger is down): %v", name, err)
			}
		})
		providers[name] = tp
	}
	st := startStack(t, stack.Options{TracerProviders: func(name string) trace.TracerProvider { return providers[name] }})

	tid := trace.TraceID{0x1a, 0xe6, 0xe5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
	body, _ := events("jaeger", 1) // one event: one shard, one batch
	require.Equal(t, http.StatusAccepted, post(t, st, body, "traceparent", traceparent(tid, true)))

	// Spans end after their acks and reach Jaeger in the next export: wait
	// for all six.
	var spans []jaeger.Span
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		got, err := j.Trace(t.Context(), tid.String())
		if !assert.NoError(c, err) {
			return
		}
		spans = got
		assert.Len(c, got, 6, "spans of the trace")
	}, 30*time.Second, 100*time.Millisecond)

	// Every span once, by service and name: the shard the event hashes to
	// is the one its partitioner publish names.
	byName := map[string]jaeger.Span{}
	var names []string
	for _, s := range spans {
		require.Equal(t, tid.String(), s.TraceID)
		name := s.OperationName
		if strings.HasPrefix(name, "publish events.shard.") {
			name = "publish events.shard.k"
		}
		key := s.Service + " " + name
		names = append(names, key)
		byName[key] = s
	}
	sort.Strings(names)
	require.Equal(t, []string{
		"surge-batcher batch",
		"surge-ingest POST /v1/events",
		"surge-ingest publish ingest.default",
		"surge-partitioner partition",
		"surge-partitioner publish events.shard.k",
		"surge-sink sink insert",
	}, names)

	// One chain under the caller's span: request > publish > partition >
	// shard publish > batch > insert, each span with one reference. The
	// batch span's is its link to the shard publish, which is its parent
	// too: Jaeger shows the two as one FOLLOWS_FROM (a batch follows from
	// each sampled message it holds).
	chain := []string{
		"surge-ingest POST /v1/events", "surge-ingest publish ingest.default", "surge-partitioner partition",
		"surge-partitioner publish events.shard.k", "surge-batcher batch", "surge-sink sink insert",
	}
	refType := map[string]string{"surge-batcher batch": "FOLLOWS_FROM"}
	parent := "00f067aa0ba902b7" // the caller's span, in the traceparent
	for _, name := range chain {
		want := refType[name]
		if want == "" {
			want = "CHILD_OF"
		}
		require.Equal(t, []jaeger.Reference{{RefType: want, TraceID: tid.String(), SpanID: parent}}, byName[name].References,
			"references of %s", name)
		parent = byName[name].SpanID
	}
	shardPublish, batchSpan, insert := byName[chain[3]], byName[chain[4]], byName[chain[5]]

	// The shard and the batch agree along the way, and the insert names
	// its ClickHouse query: surge-sink-<batch id>-<trace id>-<attempt>.
	k, err := strconv.Atoi(strings.TrimPrefix(shardPublish.OperationName, "publish events.shard."))
	require.NoError(t, err)
	for _, s := range []jaeger.Span{shardPublish, batchSpan, insert} {
		require.Equal(t, float64(k), s.Tag("surge.shard"), "surge.shard of %s", s.OperationName)
	}
	batchID, ok := batchSpan.Tag("surge.batch.id").(string)
	require.True(t, ok, "surge.batch.id of the batch span: %v", batchSpan.Tags)
	require.Equal(t, batchID, insert.Tag("surge.batch_id"))
	require.Equal(t, "clickhouse", insert.Tag("db.system"))
	require.Equal(t, "surge-sink-"+batchID+"-"+tid.String()+"-1", insert.Tag(sink.AttrQueryID))

	// Jaeger down: sampled requests still land, every event exactly once.
	require.NoError(t, j.Stop())
	const requests, perRequest = 10, 20
	for i := range requests {
		body, _ := events("down-"+strconv.Itoa(i), perRequest)
		down := trace.TraceID{0xd0, byte(i), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}
		require.Equal(t, http.StatusAccepted, post(t, st, body, "traceparent", traceparent(down, true)))
	}
	waitInserted(t, st, 1+requests*perRequest)
	ch := openClickHouse(t, st.ClickHouse.Addrs()[0])
	var total, down, downIDs uint64
	require.NoError(t, ch.QueryRow(t.Context(), fmt.Sprintf(
		"SELECT count(), countIf(user_id LIKE 'down-%%'), uniqExactIf(event_id, user_id LIKE 'down-%%') FROM %s.events",
		st.Database)).Scan(&total, &down, &downIDs))
	require.Equal(t, []uint64{1 + requests*perRequest, requests * perRequest, requests * perRequest}, []uint64{total, down, downIDs},
		"rows in ClickHouse: all, sent while Jaeger was down, their distinct event ids")
	require.NoError(t, ch.Close()) // an open connection delays the server's stop
}
