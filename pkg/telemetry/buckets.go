package telemetry

import "github.com/prometheus/client_golang/prometheus"

// The histogram buckets Surge's services share, so the same quantity
// measured on both sides of a stream (a batch's rows and bytes as the
// batcher publishes it and as the sink receives it) lands in the same
// buckets and the two can be compared bucket by bucket.
var (
	// BatchRowsBuckets: rows per batch, 10 to 81,920 (a batch holds at
	// most batch.max_rows, 10,000 by default).
	BatchRowsBuckets = prometheus.ExponentialBuckets(10, 2, 14)
	// BatchBytesBuckets: encoded bytes per batch, 1 KiB to 8 MiB (the
	// streams' max_msg_size).
	BatchBytesBuckets = prometheus.ExponentialBuckets(1024, 2, 14)
)
