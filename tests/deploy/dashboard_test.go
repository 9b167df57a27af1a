package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	grafana "github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/tenants"
	"github.com/surge-events/surge/tools/stack"
)

// dashboardFile is the dashboard Grafana provisions in compose.
const dashboardFile = "deployments/grafana/dashboards/surge.json"

// dashboard is what the tests read of a Grafana dashboard's JSON.
type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID          int         `json:"id"`
	Type        string      `json:"type"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Datasource  *datasource `json:"datasource"`
	GridPos     struct {
		H int `json:"h"`
		W int `json:"w"`
		X int `json:"x"`
		Y int `json:"y"`
	} `json:"gridPos"`
	Targets []struct {
		RefID        string      `json:"refId"`
		Expr         string      `json:"expr"`
		LegendFormat string      `json:"legendFormat"`
		Datasource   *datasource `json:"datasource"`
	} `json:"targets"`
	// Panels are those of a collapsed row.
	Panels []panel `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, dashboardFile))
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(data, &d))
	return d
}

// TestDashboardSchema decodes the dashboard strictly against Grafana's own
// schema (the Grafana Foundation SDK's types, with the panel and query
// plugins registered): a misspelled option, a value of the wrong type or a
// missing required field is an error, as Grafana would ignore or reject it.
func TestDashboardSchema(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	data, err := os.ReadFile(filepath.Join(root, dashboardFile))
	require.NoError(t, err)
	var d grafana.Dashboard
	require.NoError(t, sdkErr(d.UnmarshalJSONStrict(data)))
	require.NoError(t, sdkErr(d.Validate()))
	require.NotEmpty(t, d.Panels)
}

// sdkErr is err, or nil for the SDK's empty error list (it returns one,
// not nil, when everything decodes).
func sdkErr(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}

// dashboardRows are the dashboard's rows, top to bottom.
var dashboardRows = []string{
	"Ingest",
	"Throughput and end-to-end latency",
	"Lag per shard and hop",
	"ClickHouse inserts",
	"Retries, dead letters and stalls",
	"Services",
}

// grafanaVars are Grafana's interval variables a query may use, with a
// value of the same kind for the Prometheus parser.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "1m", "$__range", "1h")

// queries returns every PromQL query of the dashboard by "panel/refId",
// Grafana's variables replaced.
func (d dashboard) queries() map[string]string {
	out := map[string]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out[p.Title+"/"+tg.RefID] = grafanaVars.Replace(tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// TestDashboard checks the dashboard's shape: its rows, every panel
// described and reading the provisioned Prometheus, panels that do not
// overlap, every query valid PromQL, and a panel for each thing an
// operator looks for.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	require.Equal(t, "surge", d.UID, "docker-compose.yml's header links /d/surge")
	require.Equal(t, "Surge", d.Title)
	dsUID := provisionedDatasource(t).UID

	var rows []string
	ids := map[int]string{}
	type rect struct{ x, y, w, h int }
	var placed []rect
	for _, p := range d.Panels {
		require.NotContains(t, ids, p.ID, "panel id %d of %q is taken by %q", p.ID, p.Title, ids[p.ID])
		ids[p.ID] = p.Title
		g := p.GridPos
		require.True(t, g.W > 0 && g.H > 0 && g.X >= 0 && g.Y >= 0 && g.X+g.W <= 24, "%q: gridPos %+v off the 24-column grid", p.Title, g)
		r := rect{g.X, g.Y, g.W, g.H}
		for _, o := range placed {
			overlap := r.x < o.x+o.w && o.x < r.x+r.w && r.y < o.y+o.h && o.y < r.y+r.h
			require.False(t, overlap, "%q overlaps another panel", p.Title)
		}
		placed = append(placed, r)
		if p.Type == "row" {
			require.Empty(t, p.Panels, "row %q is collapsed: its panels would be hidden", p.Title)
			rows = append(rows, p.Title)
			continue
		}
		require.NotEmpty(t, p.Title, "panel %d", p.ID)
		require.NotEmpty(t, p.Description, "%q says what it shows", p.Title)
		require.NotNil(t, p.Datasource, p.Title)
		require.Equal(t, datasource{Type: "prometheus", UID: dsUID}, *p.Datasource, "%q reads the provisioned Prometheus", p.Title)
		require.NotEmpty(t, p.Targets, "%q has no query", p.Title)
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			require.NotEmpty(t, tg.RefID, p.Title)
			require.False(t, refs[tg.RefID], "%q: refId %s twice", p.Title, tg.RefID)
			refs[tg.RefID] = true
			require.NotNil(t, tg.Datasource, p.Title)
			require.Equal(t, *p.Datasource, *tg.Datasource, p.Title)
			require.NotEmpty(t, tg.LegendFormat, "%q/%s: a legend names the series", p.Title, tg.RefID)
		}
	}
	require.Equal(t, dashboardRows, rows)

	used := map[string]bool{}
	for where, q := range d.queries() {
		require.NotContains(t, q, "$", "%s: a variable the dashboard does not define", where)
		for _, m := range metricsOf(t, where, q) {
			used[m] = true
		}
	}
	// What operators look for (issue 12), each by the metric that shows it.
	for what, metric := range map[string]string{
		"ingest rate":              "surge_ingest_events_accepted_total",
		"status codes":             "surge_ingest_requests_total",
		"inserted rows/s":          "surge_sink_rows_inserted_total",
		"end-to-end latency":       "surge_sink_end_to_end_seconds_bucket",
		"INGEST lag":               "surge_partitioner_consumer_pending",
		"EVENTS lag per shard":     "surge_batcher_consumer_pending",
		"BATCHES lag per shard":    "surge_sink_consumer_pending",
		"stream bytes vs limit":    "surge_stream_max_bytes",
		"insert latency":           "surge_sink_insert_duration_seconds_bucket",
		"sink retries":             "surge_sink_retries_total",
		"batcher retries":          "surge_batcher_publish_retries_total",
		"sink dead letters":        "surge_sink_dead_letters_total",
		"batcher dead letters":     "surge_batcher_dead_letters_total",
		"partitioner dead letters": "surge_partitioner_dead_letters_total",
		"sink stalls":              "surge_sink_stalls_total",
		"batcher stalls":           "surge_batcher_stalls_total",
		"partitioner stalls":       "surge_partitioner_stalls_total",
		"readiness":                "surge_sink_ready",
	} {
		assert.True(t, used[metric], "no panel shows %s (%s)", what, metric)
	}
}

// promqlParser parses PromQL as the compose Prometheus does, without
// experimental functions.
var promqlParser = parser.NewParser(parser.Options{})

// metricsOf parses a PromQL expression and returns the metric names it
// selects. Every selector must name its metric: a regular expression on
// __name__ could match nothing without anyone noticing.
func metricsOf(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := promqlParser.ParseExpr(expr)
	require.NoError(t, err, "%s: %s", where, expr)
	var out []string
	parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			name := selectorName(vs)
			require.NotEmpty(t, name, "%s: %s selects no metric by name", where, vs)
			out = append(out, name)
		}
		return nil
	})
	require.NotEmpty(t, out, "%s: %s reads no metric", where, expr)
	return out
}

// selectorName is the metric a selector names, "" when it names none.
func selectorName(vs *parser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
			return m.Value
		}
	}
	return ""
}

// underAbsent tells whether a node with these ancestors is read by
// absent() or absent_over_time().
func underAbsent(path []parser.Node) bool {
	return slices.ContainsFunc(path, func(n parser.Node) bool {
		c, ok := n.(*parser.Call)
		return ok && (c.Func.Name == "absent" || c.Func.Name == "absent_over_time")
	})
}

// commonLabels are put on every series by Prometheus' scrape.
var commonLabels = []string{"job", "instance"}

// checkExported checks that expr reads only series that exist: each
// metric it selects is in known, each label it matches on, groups by or
// joins on is one those series carry (or job and instance), and each job it
// names is a Surge service.
func checkExported(t *testing.T, where, expr string, known exported) {
	t.Helper()
	e, err := promqlParser.ParseExpr(expr)
	require.NoError(t, err, "%s: %s", where, expr)
	labelsUnder := func(n parser.Node) []string {
		ls := slices.Clone(commonLabels)
		parser.Inspect(n, func(node parser.Node, _ []parser.Node) error {
			if vs, ok := node.(*parser.VectorSelector); ok {
				ls = append(ls, known[selectorName(vs)]...)
			}
			return nil
		})
		return ls
	}
	parser.Inspect(e, func(node parser.Node, path []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			name := selectorName(n)
			has, ok := known[name]
			if !assert.True(t, ok, "%s: %s is not a metric Surge exports", where, name) {
				return nil
			}
			for _, m := range n.LabelMatchers {
				switch m.Name {
				case model.MetricNameLabel:
				case "job":
					if underAbsent(path) {
						// absent(up{job="sink"}): one service at a time, on purpose.
						assert.True(t, slices.ContainsFunc(surgeServices, m.Matches), "%s: %s names no Surge service", where, m)
						break
					}
					for _, svc := range surgeServices {
						assert.True(t, m.Matches(svc), "%s: %s leaves out job %s", where, m, svc)
					}
					for _, other := range supportingServices {
						assert.False(t, m.Matches(other), "%s: %s takes in job %s", where, m, other)
					}
				case "instance":
				default:
					assert.Contains(t, has, m.Name, "%s: %s has no label %s", where, name, m.Name)
				}
			}
		case *parser.AggregateExpr:
			if !n.Without {
				under := labelsUnder(n.Expr)
				for _, l := range n.Grouping {
					assert.Contains(t, under, l, "%s: %s groups by %s, which its series lack", where, n, l)
				}
			}
		case *parser.BinaryExpr:
			if vm := n.VectorMatching; vm != nil && vm.On {
				for _, side := range []parser.Node{n.LHS, n.RHS} {
					under := labelsUnder(side)
					for _, l := range vm.MatchingLabels {
						assert.Contains(t, under, l, "%s: %s joins on %s, which %s lacks", where, n, l, side)
					}
				}
			}
		}
		return nil
	})
}

// TestDashboardAndAlertsReadExportedMetrics runs the pipeline and checks
// every query of the dashboard and every alert expression against what
// the four services' /metrics serve.
func TestDashboardAndAlertsReadExportedMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("runs NATS, ClickHouse and the four services")
	}
	bySvc, runtime := liveMetrics(t)
	known := exported{"up": nil} // Prometheus' own: 1 while a target is scraped
	for _, svc := range surgeServices {
		e := bySvc[svc]
		for name := range e {
			// Stream and schema series are shared families: every service
			// reports the streams, and the batcher (projection) and the sink
			// (DDL) report the typed columns' schema.
			if strings.HasPrefix(name, "surge_") && !strings.HasPrefix(name, "surge_stream_") && !strings.HasPrefix(name, "surge_schema_") {
				require.True(t, strings.HasPrefix(name, "surge_"+svc+"_"), "%s exports %s", svc, name)
			}
		}
		// Every service reports readiness and every stream.
		for _, name := range []string{"surge_" + svc + "_ready", "surge_stream_bytes", "surge_stream_max_bytes", "surge_stream_messages"} {
			require.Contains(t, e, name, svc)
		}
		maps.Copy(known, e)
	}
	for name, ls := range runtime {
		require.NotContains(t, known, name)
		known[name] = ls
	}

	t.Run("dashboard", func(t *testing.T) {
		qs := loadDashboard(t).queries()
		require.NotEmpty(t, qs)
		for _, where := range slices.Sorted(maps.Keys(qs)) {
			checkExported(t, where, qs[where], known)
		}
	})
	t.Run("alerts", func(t *testing.T) {
		for _, r := range loadRules(t) {
			checkExported(t, r.Alert, r.Expr, known)
		}
	})
}

// exported maps every series name a Surge service exports (histograms
// expanded to _bucket, _sum and _count) to its label names.
type exported map[string][]string

// add records the families of one scrape.
func (e exported) add(mfs map[string]*dto.MetricFamily) {
	for name, mf := range mfs {
		labels := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = true
			}
		}
		names := []string{name}
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM:
			names = []string{name + "_bucket", name + "_sum", name + "_count"}
		case dto.MetricType_SUMMARY:
			names = []string{name, name + "_sum", name + "_count"}
		}
		for _, n := range names {
			ls := slices.Sorted(maps.Keys(labels))
			if strings.HasSuffix(n, "_bucket") {
				ls = append(ls, "le")
			}
			e[n] = ls
		}
	}
}

// scrapeClient is the scrape's HTTP client: no request waits without bound.
var scrapeClient = &http.Client{Timeout: 10 * time.Second}

// scrape fetches and parses addr's /metrics in the text format Prometheus reads.
func scrape(ctx context.Context, addr string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", addr, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("scrape %s: %s: %s", addr, resp.Status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", addr, err)
	}
	return mfs, nil
}

// liveMetrics runs the whole pipeline (embedded NATS, real ClickHouse
// servers, the four services), sends a known load, including rejected
// requests so labelled series appear, and scrapes each service's /metrics
// once every row is inserted. It returns the series of every service, and
// the Go runtime and process series that service.Main adds to each
// process's registry (the in-process stack shares one process).
func liveMetrics(t *testing.T) (bySvc map[string]exported, runtime exported) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{
		Dir: t.TempDir(), Shards: 4, ClickHouseServers: 2, NATSPort: -1,
		Policy: batch.Policy{MaxRows: 5000, MaxBytes: 8 << 20, MaxAge: 200 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Stop()) })

	const events = 40
	var b strings.Builder
	b.WriteByte('[')
	for i := range events {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"user_id":"u%d","type":"t"}`, i)
	}
	b.WriteByte(']')
	require.Equal(t, http.StatusBadRequest, postEvents(t, st.IngestURL, `[{"user_id":"u1"}]`))
	// A default quota of one request's events, barely refilled: the
	// request that finds the bucket spent is refused, so the quota's
	// series appear.
	nc, err := nats.Connect(st.NATS.ClientURL(), nats.UserInfo(st.NATSAuth.User, st.NATSAuth.Password))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	limits, err := tenants.Open(ctx, js, 1)
	require.NoError(t, err)
	require.NoError(t, limits.Set(ctx, "", tenants.Limits{EventsPerSecond: 0.001, Burst: events}))
	accepted := 0
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := scrapeClient.Post(st.IngestURL+"/v1/events", "application/json", strings.NewReader(b.String()))
		if !assert.NoError(c, err) {
			return
		}
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			accepted += events
		}
		assert.Equal(c, http.StatusTooManyRequests, resp.StatusCode)
	}, 30*time.Second, 20*time.Millisecond)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, float64(accepted), stack.Sum(st.Part("sink").Registry, "surge_sink_rows_inserted_total"))
	}, 30*time.Second, 20*time.Millisecond)

	bySvc = map[string]exported{}
	for _, p := range st.Parts {
		mfs, err := scrape(t.Context(), p.AdminAddr)
		require.NoError(t, err)
		bySvc[p.Name] = exported{}
		bySvc[p.Name].add(mfs)
	}
	require.ElementsMatch(t, surgeServices, slices.Collect(maps.Keys(bySvc)))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	runtime = exported{}
	runtime.add(byName)
	return bySvc, runtime
}

// postEvents sends body to ingest and returns the status.
func postEvents(t *testing.T, ingestURL, body string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, ingestURL+"/v1/events", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := scrapeClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode
}
