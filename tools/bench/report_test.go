package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"image"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/html"
	"gonum.org/v1/plot/plotter"
)

// The plots of the report, in page order: figure id and title.
var reportPlotTitles = [][2]string{
	{"throughput", "Accepted and inserted events/s"},
	{"latency-histogram", "Ingest-to-queryable latency: histogram"},
	{"latency-percentiles", "Ingest-to-queryable latency by percentile"},
	{"latency-probes", "Ingest-to-queryable latency of each probe"},
	{"shards", "Rows inserted per shard, throughput phase"},
	{"cpu", "CPU: the bench process and ClickHouse"},
	{"heap", "Go heap in use"},
}

// TestBenchReport runs a small bench with --report and reads the page
// and the JSON back: every plot is there, the page fetches nothing, and
// the figures are the ones the bench printed.
func TestBenchReport(t *testing.T) {
	if testing.Short() {
		t.Skip("starts NATS, a clickhouse-server and the four services")
	}
	const events, shards = 20_000, 4
	dir := filepath.Join(t.TempDir(), "report")
	out, err := captureStdout(t, func() error {
		return Run([]string{"--events", strconv.Itoa(events), "--rate", "5000", "--rate-for", "3s",
			"--shards", strconv.Itoa(shards), "--clickhouse-servers", "1", "--dir", t.TempDir(), "--report", dir})
	})
	t.Log(out)
	require.NoError(t, err)

	// report.json holds the printed report verbatim and the same figures.
	raw, err := os.ReadFile(filepath.Join(dir, "report.json"))
	require.NoError(t, err)
	var d reportData
	require.NoError(t, json.Unmarshal(raw, &d))
	require.NotEmpty(t, d.Summary)
	assert.Contains(t, out, d.Summary)
	printed := func(re string) string {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(d.Summary)
		require.Len(t, m, 2, re)
		return m[1]
	}
	assert.Equal(t, strconv.Itoa(events), printed(`\((\d+) events in `))
	assert.Equal(t, strconv.Itoa(events), printed(`all (\d+) rows in ClickHouse`))
	assert.Equal(t, events, d.Throughput.Events)
	assert.Equal(t, printed(`accepted \(HTTP 202\) +(\d+) events/s`), strconv.FormatFloat(d.Throughput.AcceptedPerSecond, 'f', 0, 64))
	assert.Equal(t, printed(`inserted \(queryable\) +(\d+) events/s`), strconv.FormatFloat(d.Throughput.InsertedPerSecond, 'f', 0, 64))
	assert.Equal(t, printed(`ClickHouse bulk insert +(\d+) rows/s`), strconv.FormatFloat(d.Reference.BulkRowsPerSecond, 'f', 0, 64))
	assert.Equal(t, printed(`one block repeated +(\d+) rows/s`), strconv.FormatFloat(d.Reference.RepeatedBlockRowsPerSecond, 'f', 0, 64))
	assert.Equal(t, printed(`ClickHouse single-row insert +(\d+) rows/s`), strconv.FormatFloat(d.Reference.SingleRowRowsPerSecond, 'f', 0, 64))
	assert.Equal(t, printed(`ingest-to-queryable at (\d+)/s`), strconv.Itoa(d.Latency.Rate))
	for _, q := range []struct {
		name string
		ms   int64
	}{{"p50", d.Latency.P50Millis}, {"p99", d.Latency.P99Millis}, {"max", d.Latency.MaxMillis}} {
		dur, err := time.ParseDuration(printed(q.name + ` (\S+)`))
		require.NoError(t, err)
		assert.Equal(t, dur, time.Duration(q.ms)*time.Millisecond, q.name)
	}
	assert.Equal(t, printed(`\((\d+) probes\)`), strconv.Itoa(d.Latency.Probes))
	// ClickHouse's own log of the sink's inserts, read as the throughput
	// phase ended: exactly the phase's rows, none of the latency phase's.
	m := regexp.MustCompile(`sink inserts, throughput phase  (\d+) of (\d+) rows in all`).FindStringSubmatch(out)
	require.Len(t, m, 3)
	assert.Equal(t, strconv.Itoa(events), m[2])
	assert.Regexp(t, `events_local +\d+ active parts after the run's merges, \d+ files a part`, out)
	// The sink leg: the restarted sink inserted exactly the phase's rows
	// from a full BATCHES, printed beside the bulk rate.
	require.NotNil(t, d.SinkLeg)
	assert.Equal(t, events, d.SinkLeg.Rows)
	assert.Equal(t, strconv.Itoa(events), printed(`\((\d+) rows from a full BATCHES`))
	assert.Equal(t, printed(`sink leg alone +(\d+) rows/s`), strconv.FormatFloat(d.SinkLeg.SinkRowsPerSecond, 'f', 0, 64))
	assert.InDelta(t, d.SinkLeg.SinkRowsPerSecond/d.Reference.BulkRowsPerSecond, d.SinkLeg.SinkShareOfBulk, 1e-9)
	// The live heap by owner sets the embedded NATS server's apart from
	// the services' (a small run may sample nothing live of one service).
	assert.Positive(t, d.HeapByOwner[ownerNATS])
	var services uint64
	for owner, b := range d.HeapByOwner {
		if name, ok := strings.CutPrefix(owner, serviceOwnerPref); ok {
			assert.Contains(t, []string{"ingest", "partitioner", "batcher", "sink"}, name)
			services += b
		}
	}
	assert.Positive(t, services)
	assert.Len(t, d.Latency.ProbesSeen, d.Latency.Probes)
	// So does the CPU by owner, each owner's line printed from the same
	// figures.
	var cpu float64
	for owner, s := range d.CPUByOwner {
		if name, ok := strings.CutPrefix(owner, serviceOwnerPref); ok {
			assert.Contains(t, []string{"ingest", "partitioner", "batcher", "sink"}, name)
			cpu += s
		}
		assert.Equal(t, fmt.Sprintf("%.2f", perMillion(s, events)), printed(`\n    `+regexp.QuoteMeta(owner)+` +(\S+) s +\d+%`), owner)
	}
	assert.Positive(t, cpu)

	// Every shard inserted rows, and they add up to the events sent.
	require.Len(t, d.Throughput.RowsPerShard, shards)
	var rows float64
	for k, r := range d.Throughput.RowsPerShard {
		assert.Equal(t, k, r.Shard)
		assert.Positive(t, r.Rows, "shard %d", k)
		rows += r.Rows
	}
	assert.Equal(t, float64(events), rows)

	// The phases follow each other; the samples cover them and never go back.
	require.Len(t, d.Phases, 4)
	for i, name := range []string{"throughput", "latency", "sink leg", "reference"} {
		assert.Equal(t, name, d.Phases[i].Name)
		assert.LessOrEqual(t, d.Phases[i].Start, d.Phases[i].End, name)
		if i > 0 {
			assert.LessOrEqual(t, d.Phases[i-1].End, d.Phases[i].Start, name)
		}
	}
	assert.Zero(t, d.Phases[0].Start)
	assert.Equal(t, d.Throughput.InsertedSeconds, d.Phases[0].End)
	require.NotEmpty(t, d.Samples)
	last := d.Samples[len(d.Samples)-1]
	assert.Equal(t, d.Phases[3].End, last.T)
	for i := 1; i < len(d.Samples); i++ {
		prev, cur := d.Samples[i-1], d.Samples[i]
		assert.Less(t, prev.T, cur.T, "sample %d", i)
		assert.LessOrEqual(t, prev.Accepted, cur.Accepted, "sample %d", i)
		assert.LessOrEqual(t, prev.Inserted, cur.Inserted, "sample %d", i)
		assert.LessOrEqual(t, prev.CPUSeconds, cur.CPUSeconds, "sample %d", i)
		assert.LessOrEqual(t, prev.ClickHouseCPUSeconds, cur.ClickHouseCPUSeconds, "sample %d", i)
		assert.LessOrEqual(t, prev.MachineCPUSeconds, cur.MachineCPUSeconds, "sample %d", i)
		assert.Positive(t, cur.HeapInuseBytes, "sample %d", i)
	}
	// By the end, the throughput and sink-leg phases' events and every
	// probe seen were accepted and inserted (the stopped sink's rows kept).
	assert.GreaterOrEqual(t, last.Accepted, int64(2*events+d.Latency.Probes))
	assert.GreaterOrEqual(t, last.Inserted, float64(2*events+d.Latency.Probes))
	assert.Positive(t, last.CPUSeconds)
	assert.Positive(t, last.ClickHouseCPUSeconds)
	// The machine ran the bench process and ClickHouse, at least. The
	// kernel counts the machine's and each process's time apart, in
	// clock ticks each, so they may differ by a few ticks per CPU and
	// process over the run: 2% of it, and at least 0.25 s, is allowed.
	first := d.Samples[0]
	procs := (last.CPUSeconds - first.CPUSeconds) + (last.ClickHouseCPUSeconds - first.ClickHouseCPUSeconds)
	assert.GreaterOrEqual(t, last.MachineCPUSeconds-first.MachineCPUSeconds, procs-max(0.25, procs*0.02))

	// The page: one figure per plot, each one inline SVG under its caption
	// with the plot's title drawn in it, and nothing to fetch.
	page, err := os.ReadFile(filepath.Join(dir, "report.html"))
	require.NoError(t, err)
	doc, err := html.Parse(bytes.NewReader(page))
	require.NoError(t, err)
	var figures [][2]string
	svgs := 0
	for n := range doc.Descendants() {
		if n.Type != html.ElementNode {
			continue
		}
		for _, a := range n.Attr {
			assert.NotContains(t, []string{"src", "href"}, a.Key, "<%s %s=%q>", n.Data, a.Key, a.Val)
		}
		assert.NotContains(t, []string{"script", "link", "img", "iframe"}, n.Data)
		switch n.Data {
		case "svg":
			svgs++
		case "figure":
			var caption string
			var figSVGs []*html.Node
			for c := range n.Descendants() {
				switch {
				case c.Type == html.ElementNode && c.Data == "figcaption":
					caption = textOf(c)
				case c.Type == html.ElementNode && c.Data == "svg":
					figSVGs = append(figSVGs, c)
				}
			}
			figures = append(figures, [2]string{attr(n, "id"), caption})
			if assert.Len(t, figSVGs, 1, caption) {
				assert.Contains(t, svgTexts(figSVGs[0]), caption)
			}
		}
	}
	assert.Equal(t, reportPlotTitles, figures)
	assert.Equal(t, len(reportPlotTitles), svgs)
	pre := regexp.MustCompile(`(?s)<pre id="summary">(.*?)</pre>`).FindSubmatch(page)
	require.Len(t, pre, 2)
	assert.Equal(t, d.Summary, html.UnescapeString(string(pre[1])))

	// Each plot is also an SVG file of its own, well-formed XML, and a
	// PNG of the plot's size at pngDPI.
	for _, p := range reportPlotTitles {
		f, err := os.Open(filepath.Join(dir, p[0]+".png"))
		require.NoError(t, err)
		img, err := png.Decode(f)
		f.Close()
		require.NoError(t, err, p[0])
		assert.Equal(t, image.Rect(0, 0, int(math.Ceil(plotW.Dots(pngDPI))), int(math.Ceil(plotH.Dots(pngDPI)))), img.Bounds(), p[0])
	}
	for _, p := range reportPlotTitles {
		f, err := os.Open(filepath.Join(dir, p[0]+".svg"))
		require.NoError(t, err)
		var root struct{ XMLName xml.Name }
		err = xml.NewDecoder(f).Decode(&root)
		f.Close()
		require.NoError(t, err, p[0])
		assert.Equal(t, "svg", root.XMLName.Local, p[0])
	}
}

// captureStdout runs fn with os.Stdout going to a pipe and returns what
// it printed.
func captureStdout(t *testing.T, fn func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	stdout := os.Stdout
	os.Stdout = w
	printed := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		printed <- string(b)
	}()
	ferr := fn()
	os.Stdout = stdout
	require.NoError(t, w.Close())
	out := <-printed
	require.NoError(t, r.Close())
	return out, ferr
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func textOf(n *html.Node) string {
	var b strings.Builder
	for c := range n.Descendants() {
		if c.Type == html.TextNode {
			b.WriteString(c.Data)
		}
	}
	return strings.TrimSpace(b.String())
}

// svgTexts lists the strings an SVG element draws.
func svgTexts(svg *html.Node) []string {
	var out []string
	for c := range svg.Descendants() {
		if c.Type == html.ElementNode && c.Data == "text" {
			out = append(out, textOf(c))
		}
	}
	return out
}

func TestRates(t *testing.T) {
	samples := func(ts ...float64) []runSample {
		var s []runSample
		for i, x := range ts {
			s = append(s, runSample{T: x, Inserted: float64(1000 * i)})
		}
		return s
	}
	inserted := func(s runSample) float64 { return s.Inserted }
	for _, tc := range []struct {
		name string
		in   []runSample
		want plotter.XYs
	}{
		{"none", nil, nil},
		{"one sample has no rate", samples(0), nil},
		// Every 0.5 s: the window reaches back one second, two samples.
		{"trailing window", samples(0, 0.5, 1, 1.5), plotter.XYs{{X: 0.5, Y: 2000}, {X: 1, Y: 2000}, {X: 1.5, Y: 2000}}},
		// Samples further apart than the window: the rate over the gap.
		{"wide gaps", samples(0, 2, 6), plotter.XYs{{X: 2, Y: 500}, {X: 6, Y: 250}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, rates(tc.in, inserted))
		})
	}
}

func TestThinKeepsTheLastSample(t *testing.T) {
	var s []runSample
	for i := range 5 {
		s = append(s, runSample{T: float64(i)})
	}
	assert.Equal(t, []runSample{{T: 0}, {T: 2}, {T: 4}}, thin(s))
	assert.Equal(t, []runSample{{T: 1}, {T: 3}}, thin(s[:4]))
}

func TestSITicks(t *testing.T) {
	var labels []string
	for _, tk := range (siTicks{}).Ticks(0, 300_000) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	assert.Equal(t, []string{"0", "100k", "200k", "300k"}, labels)
	labels = nil
	for _, tk := range (siTicks{}).Ticks(0, 2_500_000) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	assert.Equal(t, []string{"0", "1M", "2M"}, labels)
}
