package service

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
)

// gaugeOf reads one series of reg, -1 when it is missing.
func gaugeOf(t assert.TestingT, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	mfs, err := reg.Gather()
	if !assert.NoError(t, err) {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue series
				}
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestReadyAndStreamGauges checks surge_<service>_ready follows /readyz and
// the stream gauges report what JetStream holds against each limit.
func TestReadyAndStreamGauges(t *testing.T) {
	url := startNATS(t, -1, t.TempDir())
	spec := testSpec(url)
	spec.Streams.MaxBytes = 64 << 20

	// Three requests already waiting in INGEST when the service starts.
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	require.NoError(t, streams.Ensure(t.Context(), js, spec.Streams))
	for _, body := range []string{"a", "bb", "ccc"} {
		_, err := js.Publish(t.Context(), streams.IngestSubject("t"), []byte(body))
		require.NoError(t, err)
	}
	ingest, err := js.Stream(t.Context(), streams.Ingest)
	require.NoError(t, err)
	stored := ingest.CachedInfo().State.Bytes
	require.NotZero(t, stored)

	deps := testDeps(t)
	h, err := NewHost(spec, deps)
	require.NoError(t, err)
	require.Equal(t, 0.0, gaugeOf(t, deps.Registry, "surge_test_ready", nil), "not ready before Run")

	err = h.Run(t.Context(), func(ctx context.Context, _ Conn) error {
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			assert.Equal(c, 1.0, gaugeOf(c, deps.Registry, "surge_test_ready", nil), "ready")
			assert.Equal(c, 3.0, gaugeOf(c, deps.Registry, "surge_stream_messages", map[string]string{"stream": streams.Ingest}))
			assert.Equal(c, float64(stored), gaugeOf(c, deps.Registry, "surge_stream_bytes", map[string]string{"stream": streams.Ingest}))
			for _, name := range []string{streams.Ingest, streams.Events, streams.Batches, streams.DeadLetter} {
				assert.Equal(c, float64(64<<20), gaugeOf(c, deps.Registry, "surge_stream_max_bytes", map[string]string{"stream": name}), name)
			}
			assert.Equal(c, 0.0, gaugeOf(c, deps.Registry, "surge_stream_messages", map[string]string{"stream": streams.Events}))
		}, 10*time.Second, 20*time.Millisecond)

		h.Admin().NotReady("clickhouse", "unreachable")
		assert.Equal(t, 0.0, gaugeOf(t, deps.Registry, "surge_test_ready", nil), "a failing check")
		h.Admin().Ready("clickhouse")
		assert.Equal(t, 1.0, gaugeOf(t, deps.Registry, "surge_test_ready", nil), "the check cleared")
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 0.0, gaugeOf(t, deps.Registry, "surge_test_ready", nil), "stopped")
}
