package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
	"github.com/surge-events/surge/tools/stack"
)

// heapMetric is the gauge each service's /metrics exposes for its Go heap
// in use (the Go collector's view of runtime.MemStats.HeapInuse).
const heapMetric = "go_memstats_heap_inuse_bytes"

// benchFigures are what one stack measured, side by side in the report.
type benchFigures struct {
	accepted, inserted float64 // events/s
	rate               int     // events/s of the latency phase
	lat                latencyResult
	heap               uint64 // bytes: the process's peak, or the sum of every service process's peak
	processes          int    // service processes the heap figure covers
}

// benchCluster runs the throughput and latency phases of f against `surge
// up --cluster`'s topology, started fresh in dir/cluster: the HTTP clients
// spread over both ingest instances, inserted rows counted through the
// Distributed table, and the heap summed over the eight service processes.
// rate is the latency phase's rate, lowered to half the cluster's
// throughput if that is less.
func benchCluster(ctx context.Context, f benchFlags, gen *generator, rate int) (benchFigures, error) {
	logf := func(format string, a ...any) { fmt.Printf("bench: cluster: "+format+"\n", a...) }
	if err := zookeeper.EnsureInstalled(ctx, logf); err != nil {
		return benchFigures{}, err
	}
	free, err := ports.Free(2)
	if err != nil {
		return benchFigures{}, err
	}
	c, err := stack.StartCluster(ctx, stack.ClusterOptions{
		Dir: filepath.Join(f.dir, "cluster"), Fresh: true, Shards: f.shards,
		IngestAddrs: [2]string{fmt.Sprintf("127.0.0.1:%d", free[0]), fmt.Sprintf("127.0.0.1:%d", free[1])},
		Logf:        logf,
	})
	if err != nil {
		return benchFigures{}, err
	}
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Printf("bench: cluster: stop: %v\n", err)
		}
	}()
	var urls []string
	admin := map[string]string{}
	for _, in := range c.Instances {
		admin[in.Name] = in.AdminAddr
		if in.IngestURL != "" {
			urls = append(urls, in.IngestURL)
		}
	}
	ch, err := clickhouse.Open(&clickhouse.Options{Addr: c.ClickHouse.Addrs()[:1], Settings: clickhouse.Settings{"max_execution_time": 60}})
	if err != nil {
		return benchFigures{}, err
	}
	defer ch.Close()
	// The Distributed table reads one replica of each shard.
	counter := insertedCounter{every: 200 * time.Millisecond, count: func(ctx context.Context) (float64, error) {
		var n uint64
		err := ch.QueryRow(ctx, "SELECT count() FROM "+c.Database+".events").Scan(&n)
		return float64(n), err
	}}

	fmt.Printf("bench: cluster: throughput phase: %d events, %d per request, %d clients over %s\n", f.events, f.perRequest, f.clients, strings.Join(urls, " "))
	heaps := watchHeaps(ctx, admin, 200*time.Millisecond)
	tp, err := throughput(ctx, urls, counter, gen, f)
	peaks := heaps()
	if err != nil {
		return benchFigures{}, err
	}
	out := benchFigures{accepted: tp.accepted, inserted: tp.inserted, heap: sumPeaks(peaks), processes: len(peaks), rate: rate}
	if len(peaks) != len(admin) {
		fmt.Printf("bench: cluster: heap scraped from %d of %d service processes\n", len(peaks), len(admin))
	}
	if half := int(tp.inserted / 2); half < out.rate {
		out.rate = half
	}
	fmt.Printf("bench: cluster: latency phase: %d events/s for %s with probes\n", out.rate, f.rateFor)
	var next atomic.Uint64
	send := func(body []byte) bool { return post(ctx, urls[next.Add(1)%uint64(len(urls))], body) == nil }
	if out.lat, err = latency(ctx, c.Database, ch, gen, send, out.rate, f.rateFor, f.perRequest); err != nil {
		return benchFigures{}, err
	}
	return out, nil
}

// watchHeaps scrapes heapMetric from every admin address (name ->
// host:port) each interval until the returned function is called, which
// returns each process's peak; a process never scraped is absent.
func watchHeaps(ctx context.Context, admin map[string]string, interval time.Duration) (stop func() map[string]uint64) {
	done := make(chan struct{})
	result := make(chan map[string]uint64, 1)
	go func() {
		peaks := map[string]uint64{}
		hc := &http.Client{Timeout: time.Second}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			for name, addr := range admin {
				if v, err := scrapeGauge(ctx, hc, "http://"+addr+"/metrics", heapMetric); err == nil {
					peaks[name] = max(peaks[name], uint64(v))
				}
			}
			select {
			case <-done:
				result <- peaks
				return
			case <-tick.C:
			}
		}
	}()
	return func() map[string]uint64 {
		close(done)
		return <-result
	}
}

func scrapeGauge(ctx context.Context, hc *http.Client, url, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return parseGauge(resp.Body, name)
}

// parseGauge reads the value of the unlabelled sample name from the
// Prometheus text format.
func parseGauge(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == name {
			return strconv.ParseFloat(fields[1], 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no sample %s", name)
}

// sumPeaks adds the processes' peaks. The peaks need not coincide, so the
// sum bounds the cluster's heap at any one moment from above.
func sumPeaks(peaks map[string]uint64) uint64 {
	var total uint64
	for _, v := range peaks {
		total += v
	}
	return total
}

// compareReport is the single-process stack beside the cluster under the
// same load, with the cluster/single ratio of each figure.
func compareReport(f benchFlags, single, cluster benchFigures) string {
	var b strings.Builder
	ratio := func(c, s float64) string {
		if s == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", c/s)
	}
	fmt.Fprintf(&b, "\nSurge bench, single process vs cluster (same load: %d events, %d clients x %d events/request over HTTP, %d shards)\n",
		f.events, f.clients, f.perRequest, f.shards)
	fmt.Fprintf(&b, "  %-26s %22s %22s %15s\n", "", "single process", "cluster", "cluster/single")
	fmt.Fprintf(&b, "  %-26s %13.0f events/s %13.0f events/s %15s\n", "accepted (HTTP 202)", single.accepted, cluster.accepted, ratio(cluster.accepted, single.accepted))
	fmt.Fprintf(&b, "  %-26s %13.0f events/s %13.0f events/s %15s\n", "inserted (queryable)", single.inserted, cluster.inserted, ratio(cluster.inserted, single.inserted))
	fmt.Fprintf(&b, "  %-26s %22s %22s %15s\n", "ingest-to-queryable rate", fmt.Sprintf("%d events/s", single.rate), fmt.Sprintf("%d events/s", cluster.rate), "")
	fmt.Fprintf(&b, "  %-26s %22s %22s %15s\n", "  p50", single.lat.p50, cluster.lat.p50, ratio(cluster.lat.p50.Seconds(), single.lat.p50.Seconds()))
	fmt.Fprintf(&b, "  %-26s %22s %22s %15s\n", "  p99", single.lat.p99, cluster.lat.p99, ratio(cluster.lat.p99.Seconds(), single.lat.p99.Seconds()))
	fmt.Fprintf(&b, "  %-26s %22d %22d %15s\n", "  probes", single.lat.n, cluster.lat.n, "")
	fmt.Fprintf(&b, "  %-26s %18.0f MiB %18.0f MiB %15s\n", "peak Go heap, full load", mib(single.heap), mib(cluster.heap), ratio(float64(cluster.heap), float64(single.heap)))
	fmt.Fprintf(&b, "  single process: all four services and the load generator in one process, runtime HeapInuse sampled every 100 ms\n")
	fmt.Fprintf(&b, "  cluster: 3 NATS nodes (streams at R3), ZooKeeper, 2 shards x 2 replicated ClickHouse, two processes of each service;\n")
	fmt.Fprintf(&b, "           heap is the sum over %d service processes of each one's peak %s, scraped from /metrics every 200 ms\n", cluster.processes, heapMetric)
	fmt.Fprintf(&b, "           (the load generator excluded; the peaks need not coincide); rows counted through the Distributed table\n")
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}
