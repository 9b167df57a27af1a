package bench

import (
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHistQuantileInterpolatesWithinItsBucket(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "x_seconds", Buckets: []float64{0.1, 0.2, 0.4}}, []string{"shard"})
	reg.MustRegister(h)
	h.WithLabelValues("0").Observe(0.05) // before: not counted
	before := histOf(reg, "x_seconds")
	for range 10 {
		h.WithLabelValues("0").Observe(0.15)
	}
	for range 10 {
		h.WithLabelValues("1").Observe(0.3) // the second series adds up
	}
	d := histOf(reg, "x_seconds").minus(before)
	require.Equal(t, uint64(20), d.count)
	assert.InDelta(t, 0.15, d.quantile(0.25), 1e-9) // rank 5 of the 10 in (0.1, 0.2]
	assert.InDelta(t, 0.2, d.quantile(0.5), 1e-9)
	assert.InDelta(t, 0.38, d.quantile(0.95), 1e-9) // rank 19: 9 of the 10 in (0.2, 0.4]
	h.WithLabelValues("0").Observe(5)               // past the last bound
	assert.Equal(t, 0.4, histOf(reg, "x_seconds").minus(before).quantile(1))
	assert.True(t, math.IsNaN(hist{}.quantile(0.5)))
}
