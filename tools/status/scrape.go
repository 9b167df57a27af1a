package status

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// instanceMetrics is what a batcher's or sink's /metrics says about the
// shards it runs.
type instanceMetrics struct {
	service string
	// shards are the shards it has a watchdog for
	// (surge_<service>_stalls_total{shard}): in static mode, the shards it
	// runs.
	shards map[int]bool
	// watermark is the sink's surge_sink_watermark by shard.
	watermark map[int]uint64
	// leaseID is the id it writes into the lease bucket
	// (surge_<service>_lease_instance_info{instance_id}), "" in static mode.
	leaseID string
	// A batcher with typed columns reports, by table, its column limit
	// (surge_schema_column_limit) and the values that conflicted with
	// their column (surge_schema_conflicts_total, every reason), and the
	// rows it published (surge_batcher_rows_total, every shard).
	columnLimit map[string]int
	conflicts   map[string]uint64
	rows        uint64
}

// instances asks every admin endpoint for /readyz, and the batchers and
// sinks for /metrics too, all at once.
func (c *Collector) instances(ctx context.Context) ([]Instance, map[string]*instanceMetrics) {
	out := make([]Instance, len(c.cfg.Admin))
	ms := make([]*instanceMetrics, len(c.cfg.Admin))
	var wg sync.WaitGroup
	for i, ep := range c.cfg.Admin {
		wg.Go(func() {
			out[i] = c.readiness(ctx, ep)
			if ep.Service == "batcher" || ep.Service == "sink" {
				ms[i] = c.metrics(ctx, ep)
			}
		})
	}
	wg.Wait()
	metrics := map[string]*instanceMetrics{}
	for i, m := range ms {
		if m != nil {
			metrics[c.cfg.Admin[i].Name] = m
		}
	}
	return out, metrics
}

func (c *Collector) get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, body, err
}

// readiness reads /readyz: 200 is ready; 503's body lists the failing
// checks ("not ready: check: reason; check: reason").
func (c *Collector) readiness(ctx context.Context, ep Endpoint) Instance {
	in := Instance{Name: ep.Name, Service: ep.Service, Addr: ep.Addr}
	code, body, err := c.get(ctx, "http://"+ep.Addr+"/readyz")
	switch {
	case err != nil:
		in.Reasons = []string{"no answer: " + err.Error()}
	case code == http.StatusOK:
		in.Ready = true
	default:
		text := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(body)), "not ready:"))
		for reason := range strings.SplitSeq(text, "; ") {
			if reason = strings.TrimSpace(reason); reason != "" {
				in.Reasons = append(in.Reasons, reason)
			}
		}
		if len(in.Reasons) == 0 {
			in.Reasons = []string{fmt.Sprintf("/readyz answered %d", code)}
		}
	}
	return in
}

// metrics reads the shards a batcher or sink runs from its /metrics; nil
// when it does not answer.
func (c *Collector) metrics(ctx context.Context, ep Endpoint) *instanceMetrics {
	code, body, err := c.get(ctx, "http://"+ep.Addr+"/metrics")
	if err != nil || code != http.StatusOK {
		return nil
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return nil
	}
	m := &instanceMetrics{service: ep.Service, shards: map[int]bool{}, watermark: map[int]uint64{}}
	for _, series := range families["surge_"+ep.Service+"_stalls_total"].GetMetric() {
		if k, err := strconv.Atoi(label(series, "shard")); err == nil {
			m.shards[k] = true
		}
	}
	for _, series := range families["surge_"+ep.Service+"_lease_instance_info"].GetMetric() {
		m.leaseID = label(series, "instance_id")
	}
	for _, series := range families["surge_sink_watermark"].GetMetric() {
		if k, err := strconv.Atoi(label(series, "shard")); err == nil {
			m.watermark[k] = uint64(math.Max(series.GetGauge().GetValue(), 0))
		}
	}
	m.columnLimit, m.conflicts = map[string]int{}, map[string]uint64{}
	for _, series := range families["surge_schema_column_limit"].GetMetric() {
		m.columnLimit[label(series, "table")] = int(series.GetGauge().GetValue())
	}
	for table := range m.columnLimit {
		// A counter vector shows no series before its first conflict.
		m.conflicts[table] = 0
	}
	for _, series := range families["surge_schema_conflicts_total"].GetMetric() {
		m.conflicts[label(series, "table")] += uint64(series.GetCounter().GetValue())
	}
	for _, series := range families["surge_batcher_rows_total"].GetMetric() {
		m.rows += uint64(series.GetCounter().GetValue())
	}
	return m
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// sinkWatermark is the highest watermark any sink reports for shard k:
// watermarks only grow, so a former owner's is never the higher.
func sinkWatermark(metrics map[string]*instanceMetrics, k int) (uint64, bool) {
	var wm uint64
	found := false
	for _, m := range metrics {
		if v, ok := m.watermark[k]; ok {
			wm, found = max(wm, v), true
		}
	}
	return wm, found
}
