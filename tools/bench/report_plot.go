package bench

import (
	"bytes"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// rateWindow is the trailing window a counter's rate is taken over: the
// sink inserts in batches, so a rate over one 200 ms sample is mostly
// noise.
const rateWindow = 1.0 // seconds

// Every plot of the report is this size.
var plotW, plotH = 9 * vg.Inch, 3.5 * vg.Inch

// reportFigure is one plot of the report.
type reportFigure struct {
	// ID names the figure's element in the page and its SVG file.
	ID    string
	Title string
	// Note says how to read the plot.
	Note string
	svg  []byte
	// png is the same plot as an image at pngDPI, for documents (a
	// README, an issue) whose SVG would fall back to another font.
	png []byte
}

// pngDPI is the resolution of the PNG copies: sharp on high-density screens.
const pngDPI = 144

// Inline is the figure's SVG without its XML prolog, to sit in HTML.
func (f reportFigure) Inline() template.HTML {
	s := f.svg
	if i := bytes.Index(s, []byte("<svg")); i >= 0 {
		s = s[i:]
	}
	return template.HTML(s) //nolint:gosec // drawn by gonum/plot from numbers and our own titles, which it escapes
}

// reportPlot is one plot of the report, drawn but not rendered.
type reportPlot struct {
	id, title, note string
	p               *plot.Plot
}

// reportPlots draws every plot of the report.
func reportPlots(d reportData) ([]reportPlot, error) {
	plot.DefaultFont.Variant = "Sans"
	plotter.DefaultFont.Variant = "Sans"
	builders := []struct {
		id, title, note string
		draw            func(*plot.Plot, reportData) error
	}{
		{"throughput", "Accepted and inserted events/s", "Rates over a trailing 1 s window. Dashed: ClickHouse alone on the same machine (10,000-row blocks and single-row inserts, one connection), measured in the reference phase.", drawRates},
		{"latency-histogram", "Ingest-to-queryable latency: histogram", "One probe event every 100 ms of the latency phase, from the send to its row answering a query through the Distributed table.", drawLatencyHistogram},
		{"latency-percentiles", "Ingest-to-queryable latency by percentile", "Each probe's latency against its percentile among all probes.", drawLatencyPercentiles},
		{"latency-probes", "Ingest-to-queryable latency of each probe", "Each probe by the moment it was sent.", drawLatencyOverRun},
		{"shards", "Rows inserted per shard, throughput phase", "surge_sink_rows_inserted_total of each shard when the throughput phase's last row was inserted.", drawShardRows},
		{"cpu", "CPU: the bench process and ClickHouse", "Cores busy over a trailing 1 s: the bench process (process_cpu_seconds_total: all four services, the embedded NATS server and the load generator), the clickhouse-server processes (from /proc) and every process of the machine (/proc/stat); on a shared machine the gap is what others took.", drawCPU},
		{"heap", "Go heap in use", "go_memstats_heap_inuse_bytes of the bench process.", drawHeap},
	}
	var plots []reportPlot
	for _, b := range builders {
		p := plot.New()
		p.Title.Text = b.title
		p.Legend.Top = true
		p.Y.Tick.Marker = siTicks{}
		if err := b.draw(p, d); err != nil {
			return nil, fmt.Errorf("%s: %w", b.id, err)
		}
		plots = append(plots, reportPlot{id: b.id, title: b.title, note: b.note, p: p})
	}
	return plots, nil
}

// reportFigures draws every plot of the report as SVG and as PNG.
func reportFigures(d reportData) ([]reportFigure, error) {
	plots, err := reportPlots(d)
	if err != nil {
		return nil, err
	}
	var figs []reportFigure
	for _, rp := range plots {
		c := vgsvg.New(plotW, plotH)
		rp.p.Draw(draw.New(c))
		var svg bytes.Buffer
		if _, err := c.WriteTo(&svg); err != nil {
			return nil, fmt.Errorf("%s: %w", rp.id, err)
		}
		img := vgimg.NewWith(vgimg.UseWH(plotW, plotH), vgimg.UseDPI(pngDPI), vgimg.UseBackgroundColor(color.White))
		rp.p.Draw(draw.New(img))
		var png bytes.Buffer
		if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&png); err != nil {
			return nil, fmt.Errorf("%s: %w", rp.id, err)
		}
		figs = append(figs, reportFigure{ID: rp.id, Title: rp.title, Note: rp.note, svg: svg.Bytes(), png: png.Bytes()})
	}
	return figs, nil
}

// rates turns a counter's samples into per-second rates over a trailing
// window of rateWindow seconds (or the gap between two samples, where
// wider).
func rates(s []runSample, v func(runSample) float64) plotter.XYs {
	var out plotter.XYs
	j := 0
	for i := 1; i < len(s); i++ {
		for j+1 < i && s[i].T-s[j+1].T >= rateWindow {
			j++
		}
		if dt := s[i].T - s[j].T; dt > 0 {
			out = append(out, plotter.XY{X: s[i].T, Y: (v(s[i]) - v(s[j])) / dt})
		}
	}
	return out
}

// addLine adds a line to p and its legend entry.
func addLine(p *plot.Plot, name string, xys plotter.XYs, i int, dashed bool) error {
	l, err := plotter.NewLine(xys)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	l.Color = plotutil.Color(i)
	l.Width = vg.Points(1.5)
	if dashed {
		l.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	}
	p.Add(l)
	p.Legend.Add(name, l)
	return nil
}

// siTicks are the default ticks labelled 250k, 1.5M: events/s and rows
// read better so than 250000.00.
type siTicks struct{}

func (siTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i, t := range ticks {
		if t.Label == "" {
			continue
		}
		switch v := math.Abs(t.Value); {
		case v >= 1e6:
			ticks[i].Label = strconv.FormatFloat(t.Value/1e6, 'f', -1, 64) + "M"
		case v >= 1e3:
			ticks[i].Label = strconv.FormatFloat(t.Value/1e3, 'f', -1, 64) + "k"
		default:
			ticks[i].Label = strconv.FormatFloat(t.Value, 'f', -1, 64)
		}
	}
	return ticks
}

// headroom raises the top of the y axis, so the legend at the top right
// covers no data.
func headroom(p *plot.Plot) { p.Y.Max = p.Y.Min + (p.Y.Max-p.Y.Min)*1.35 }

// addPhases marks where each phase starts with a dotted line and, at
// the bottom, its name.
func addPhases(p *plot.Plot, phases []runPhase) error {
	headroom(p)
	top := p.Y.Max
	var at plotter.XYs
	var names []string
	for _, ph := range phases {
		l, err := plotter.NewLine(plotter.XYs{{X: ph.Start, Y: p.Y.Min}, {X: ph.Start, Y: top}})
		if err != nil {
			return err
		}
		l.Color = color.Gray{Y: 150}
		l.Dashes = []vg.Length{vg.Points(1), vg.Points(3)}
		p.Add(l)
		at = append(at, plotter.XY{X: ph.Start, Y: p.Y.Min})
		names = append(names, " "+ph.Name)
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: at, Labels: names})
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Color = color.Gray{Y: 110}
		labels.TextStyle[i].YAlign = 0 // sit on the x axis
	}
	p.Add(labels)
	return nil
}

// runEnd is the last sample's time, where horizontal references end.
func runEnd(d reportData) float64 { return d.Samples[len(d.Samples)-1].T }

func drawRates(p *plot.Plot, d reportData) error {
	p.X.Label.Text = "seconds since the throughput phase started"
	p.Y.Label.Text = "events/s"
	p.Y.Min = 0
	end := runEnd(d)
	lines := []struct {
		name   string
		xys    plotter.XYs
		dashed bool
	}{
		{"accepted (load generator)", rates(d.Samples, func(s runSample) float64 { return float64(s.Accepted) }), false},
		{"inserted (sink)", rates(d.Samples, func(s runSample) float64 { return s.Inserted }), false},
		{fmt.Sprintf("ClickHouse bulk insert, %.0f rows/s", d.Reference.BulkRowsPerSecond),
			plotter.XYs{{X: 0, Y: d.Reference.BulkRowsPerSecond}, {X: end, Y: d.Reference.BulkRowsPerSecond}}, true},
		{fmt.Sprintf("ClickHouse single-row insert, %.0f rows/s", d.Reference.SingleRowRowsPerSecond),
			plotter.XYs{{X: 0, Y: d.Reference.SingleRowRowsPerSecond}, {X: end, Y: d.Reference.SingleRowRowsPerSecond}}, true},
	}
	for i, l := range lines {
		if len(l.xys) == 0 {
			continue
		}
		if err := addLine(p, l.name, l.xys, i, l.dashed); err != nil {
			return err
		}
	}
	return addPhases(p, d.Phases)
}

func probeMillis(d reportData) plotter.Values {
	v := make(plotter.Values, 0, len(d.Latency.ProbesSeen))
	for _, pr := range d.Latency.ProbesSeen {
		v = append(v, pr.LatencyMS)
	}
	return v
}

func drawLatencyHistogram(p *plot.Plot, d reportData) error {
	p.X.Label.Text = "ms from send to queryable"
	p.Y.Label.Text = "probes"
	v := probeMillis(d)
	h, err := plotter.NewHist(v, min(40, max(5, len(v)/5)))
	if err != nil {
		return err
	}
	h.FillColor = plotutil.Color(1)
	p.Add(h)
	return nil
}

func drawLatencyPercentiles(p *plot.Plot, d reportData) error {
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "ms from send to queryable"
	p.Y.Min = 0
	p.Legend.Left = true
	v := probeMillis(d)
	slices.Sort(v)
	var xys plotter.XYs
	for i, ms := range v {
		x := 100.0
		if len(v) > 1 {
			x = 100 * float64(i) / float64(len(v)-1)
		}
		xys = append(xys, plotter.XY{X: x, Y: ms})
	}
	if err := addLine(p, fmt.Sprintf("%d probes at %d events/s", len(v), d.Latency.Rate), xys, 1, false); err != nil {
		return err
	}
	marks := plotter.XYLabels{
		XYs:    plotter.XYs{{X: 50, Y: float64(d.Latency.P50Millis)}, {X: 99, Y: float64(d.Latency.P99Millis)}},
		Labels: []string{fmt.Sprintf("p50 %d ms ", d.Latency.P50Millis), fmt.Sprintf("p99 %d ms ", d.Latency.P99Millis)},
	}
	dots, err := plotter.NewScatter(marks)
	if err != nil {
		return err
	}
	dots.Color = plotutil.Color(0)
	labels, err := plotter.NewLabels(marks)
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].XAlign = -1 // left of the point
	}
	p.Add(dots, labels)
	return nil
}

func drawLatencyOverRun(p *plot.Plot, d reportData) error {
	p.X.Label.Text = "seconds since the throughput phase started (probe sent)"
	p.Y.Label.Text = "ms from send to queryable"
	p.Y.Min = 0
	var xys plotter.XYs
	for _, pr := range d.Latency.ProbesSeen {
		xys = append(xys, plotter.XY{X: pr.SentS, Y: pr.LatencyMS})
	}
	s, err := plotter.NewScatter(xys)
	if err != nil {
		return err
	}
	s.Color = plotutil.Color(1)
	s.Radius = vg.Points(1.5)
	p.Add(s)
	return nil
}

func drawShardRows(p *plot.Plot, d reportData) error {
	p.X.Label.Text = "shard"
	p.Y.Label.Text = "rows"
	rows := d.Throughput.RowsPerShard
	if len(rows) == 0 {
		return nil
	}
	v := make(plotter.Values, len(rows))
	names := make([]string, len(rows))
	for i, r := range rows {
		v[i], names[i] = r.Rows, strconv.Itoa(r.Shard)
	}
	bars, err := plotter.NewBarChart(v, max(vg.Points(4), plotW*0.6/vg.Length(len(rows))))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(1)
	bars.LineStyle.Width = 0
	p.Add(bars)
	p.NominalX(names...)
	return nil
}

func drawCPU(p *plot.Plot, d reportData) error {
	p.X.Label.Text = "seconds since the throughput phase started"
	p.Y.Label.Text = "cores busy"
	p.Y.Min = 0
	if err := addLine(p, "bench process (services, NATS, load generator)", rates(d.Samples, func(s runSample) float64 { return s.CPUSeconds }), 2, false); err != nil {
		return err
	}
	if err := addLine(p, fmt.Sprintf("clickhouse-server processes (%d)", d.Setup.ClickHouseServers), rates(d.Samples, func(s runSample) float64 { return s.ClickHouseCPUSeconds }), 3, false); err != nil {
		return err
	}
	if last := d.Samples[len(d.Samples)-1]; last.MachineCPUSeconds > 0 {
		if err := addLine(p, "whole machine", rates(d.Samples, func(s runSample) float64 { return s.MachineCPUSeconds }), 4, false); err != nil {
			return err
		}
	}
	cores := float64(d.Setup.CPUs)
	if err := addLine(p, fmt.Sprintf("cores of this machine (%d)", d.Setup.CPUs), plotter.XYs{{X: 0, Y: cores}, {X: runEnd(d), Y: cores}}, 0, true); err != nil {
		return err
	}
	return addPhases(p, d.Phases)
}

func drawHeap(p *plot.Plot, d reportData) error {
	p.X.Label.Text = "seconds since the throughput phase started"
	p.Y.Label.Text = "MiB"
	p.Y.Min = 0
	var xys plotter.XYs
	for _, s := range d.Samples {
		xys = append(xys, plotter.XY{X: s.T, Y: s.HeapInuseBytes / (1 << 20)})
	}
	if err := addLine(p, "heap in use", xys, 2, false); err != nil {
		return err
	}
	peak := mib(d.PeakHeapBytes)
	if err := addLine(p, fmt.Sprintf("peak in the throughput phase, %.0f MiB", peak), plotter.XYs{{X: 0, Y: peak}, {X: runEnd(d), Y: peak}}, 0, true); err != nil {
		return err
	}
	return addPhases(p, d.Phases)
}

var reportPage = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Surge bench report</title>
<style>
body { font-family: sans-serif; max-width: 62em; margin: 2em auto; padding: 0 1em; color: #222; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
figure { margin: 2em 0; }
figcaption { font-weight: bold; margin-bottom: .5em; }
figure svg { width: 100%; height: auto; }
.note { color: #555; font-size: .9em; }
</style>
</head>
<body>
<h1>Surge bench report</h1>
<p>Run started {{.Data.Setup.Started.Format "2006-01-02 15:04:05 MST"}} on {{.Data.Setup.CPUs}} cores ({{.Data.Setup.GOOS}}/{{.Data.Setup.GOARCH}}, {{.Data.Setup.GoVersion}}).
The raw figures of every plot are in <code>report.json</code> next to this page.</p>
<pre id="summary">{{.Data.Summary}}</pre>
{{range .Figures}}<figure id="{{.ID}}">
<figcaption>{{.Title}}</figcaption>
{{.Inline}}
<p class="note">{{.Note}}</p>
</figure>
{{end}}</body>
</html>
`))

// reportHTML is the self-contained page: the printed summary and every
// plot inline, nothing fetched.
func reportHTML(d reportData, figs []reportFigure) ([]byte, error) {
	var b bytes.Buffer
	if err := reportPage.Execute(&b, struct {
		Data    reportData
		Figures []reportFigure
	}{d, figs}); err != nil {
		return nil, fmt.Errorf("report page: %w", err)
	}
	return b.Bytes(), nil
}
