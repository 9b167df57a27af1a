package observability

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/shard"
	"github.com/surge-events/surge/tools/stack"
)

// TestMetricsCountAKnownLoad drives a known load through the pipeline and
// checks that every service's counters equal it exactly.
func TestMetricsCountAKnownLoad(t *testing.T) {
	st := startStack(t, stack.Options{})
	reg := func(name string) prometheus.Gatherer { return st.Part(name).Registry }

	const requests, perRequest = 20, 25
	want := map[string]float64{} // events by shard
	for r := range requests {
		body, _ := events("m"+strconv.Itoa(r), perRequest)
		require.Equal(t, http.StatusAccepted, post(t, st, body))
		for i := range perRequest {
			want[strconv.Itoa(shard.Of("default", "m"+strconv.Itoa(r)+"-"+strconv.Itoa(i), shards))]++
		}
	}
	// Rejected: 3 requests of 4 events, 2 of them invalid; 2 of a wrong
	// media type (their events are never read, so never counted); 1 empty.
	invalid := `[{"user_id":1,"type":"a"},{"type":"no user"},{"user_id":2},{"user_id":3,"type":"c"}]`
	for range 3 {
		require.Equal(t, http.StatusBadRequest, post(t, st, invalid))
	}
	for range 2 {
		require.Equal(t, http.StatusUnsupportedMediaType, post(t, st, `{"user_id":1,"type":"a"}`, "Content-Type", "text/csv"))
	}
	require.Equal(t, http.StatusBadRequest, post(t, st, `[]`))
	const total = requests * perRequest
	waitInserted(t, st, total)

	ingest := reg("ingest")
	require.Equal(t, map[string]float64{"": total}, counters(t, ingest, "surge_ingest_events_accepted_total", ""))
	require.Equal(t, map[string]float64{"invalid": 12}, counters(t, ingest, "surge_ingest_events_rejected_total", "reason"))
	require.Equal(t, map[string]float64{"invalid": 3, "unsupported_media_type": 2, "empty": 1},
		counters(t, ingest, "surge_ingest_requests_rejected_total", "reason"))
	require.Equal(t, map[string]float64{"202": requests, "400": 4, "415": 2}, counters(t, ingest, "surge_ingest_requests_total", "code"))
	n, _ := histogram(t, ingest, "surge_ingest_request_duration_seconds")
	require.Equal(t, uint64(requests+6), n)
	n, _ = histogram(t, ingest, "surge_ingest_publish_duration_seconds")
	require.Equal(t, uint64(requests), n)

	// The partitioner acks (and counts) a fetch once it is settled, which
	// may be after its events are inserted.
	part := reg("partitioner")
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, float64(requests), counters(c, part, "surge_partitioner_messages_total", "outcome")["acked"], "acked fetches")
	}, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, want, counters(t, part, "surge_partitioner_events_total", "shard"), "events per shard")
	require.Equal(t, map[string]float64{"acked": requests}, counters(t, part, "surge_partitioner_messages_total", "outcome"))
	n, _ = histogram(t, part, "surge_partitioner_publish_duration_seconds")
	require.Equal(t, uint64(requests), n)

	bat := reg("batcher")
	require.Equal(t, want, counters(t, bat, "surge_batcher_rows_total", "shard"), "batched rows per shard")
	batches := counters(t, bat, "surge_batcher_batches_total", "shard")
	var nBatches float64
	for _, v := range batches {
		nBatches += v
	}
	n, sum := histogram(t, bat, "surge_batcher_batch_rows")
	require.Equal(t, uint64(nBatches), n)
	require.Equal(t, float64(total), sum)
	n, _ = histogram(t, bat, "surge_batcher_batch_bytes")
	require.Equal(t, uint64(nBatches), n)

	snk := reg("sink")
	require.Equal(t, want, counters(t, snk, "surge_sink_rows_inserted_total", "shard"), "inserted rows per shard")
	require.Equal(t, map[string]float64{"inserted": nBatches}, counters(t, snk, "surge_sink_batches_total", "outcome"))
	n, _ = histogram(t, snk, "surge_sink_insert_duration_seconds")
	require.Equal(t, uint64(nBatches), n)
	n, sum = histogram(t, snk, "surge_sink_batch_rows")
	require.Equal(t, uint64(nBatches), n)
	require.Equal(t, float64(total), sum)
	n, _ = histogram(t, snk, "surge_sink_end_to_end_seconds")
	require.Equal(t, uint64(total), n, "one end-to-end sample per row")
	require.Empty(t, counters(t, snk, "surge_sink_retries_total", "shard"))
	require.Empty(t, counters(t, snk, "surge_sink_dead_letters_total", "shard"))
}
