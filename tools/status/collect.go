package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/services/sink"
)

// Endpoint is a service instance's admin server.
type Endpoint struct {
	// Name names the instance on the screen ("sink", "sink-2").
	Name string
	// Service is ingest, partitioner, batcher or sink.
	Service string
	// Addr is host:port of /readyz and /metrics.
	Addr string
}

// Config says where a deployment is and how to log in.
type Config struct {
	NATSURL      string
	NATSUser     string
	NATSPassword string
	// ClickHouse lists the shard servers' native addresses, one entry per
	// ClickHouse shard, its replicas joined by "|" (the sink's
	// clickhouse.addrs). Empty: rows are not counted and watermarks come
	// from the sinks' metrics.
	ClickHouse         []string
	ClickHouseUser     string
	ClickHousePassword string
	// Database holds events_local; "surge" when empty.
	Database string
	// Admin are the instances whose readiness (and, for batcher and sink,
	// metrics) to read.
	Admin []Endpoint
	// Shards is the number of shards; 0 finds it from the consumers,
	// leases and ClickHouse.
	Shards int
	// Timeout bounds each request; 5 s when zero.
	Timeout time.Duration
	// SchemaTable names the schema (key table.<SchemaTable> of the schema
	// bucket) whose typed columns land in Database's events_local: its
	// columns are looked for on every ClickHouse server. "events" when
	// empty.
	SchemaTable string
}

// Collector takes Reports of one deployment. It keeps its connections
// and the previous look's row counts (for rows/s) between Collects;
// Close releases them. Not safe for concurrent use.
type Collector struct {
	cfg  Config
	nc   *nats.Conn
	js   jetstream.JetStream
	ch   []*chServer
	http *http.Client

	prevTime time.Time
	prevRows map[int]uint64
}

// New connects to NATS; ClickHouse connections open at the first look.
func New(cfg Config) (*Collector, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Database == "" {
		cfg.Database = "surge"
	}
	if cfg.SchemaTable == "" {
		cfg.SchemaTable = schema.DefaultConfig().Table
	}
	opts := []nats.Option{nats.Name("surge-status"), nats.Timeout(cfg.Timeout), nats.MaxReconnects(-1)}
	if cfg.NATSUser != "" {
		opts = append(opts, nats.UserInfo(cfg.NATSUser, cfg.NATSPassword))
	}
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", cfg.NATSURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	c := &Collector{cfg: cfg, nc: nc, js: js, http: &http.Client{Timeout: cfg.Timeout}}
	for _, entry := range cfg.ClickHouse {
		c.ch = append(c.ch, &chServer{entry: entry, replicas: sink.Replicas(entry)})
	}
	return c, nil
}

// Close closes the connections.
func (c *Collector) Close() error {
	var errs []error
	for _, s := range c.ch {
		errs = append(errs, s.close())
	}
	c.nc.Close()
	return errors.Join(errs...)
}

// Collect takes one look. An error means JetStream could not be read;
// a ClickHouse server or an instance that does not answer is part of the
// report instead. Problems is left for Judge.
func (c *Collector) Collect(ctx context.Context) (*Report, error) {
	r := &Report{
		Time: time.Now().UTC(), NATS: c.nc.ConnectedUrlRedacted(),
		Ownership: map[string]string{}, DeadLetters: map[string]uint64{},
	}
	if r.NATS == "" {
		r.NATS = c.cfg.NATSURL
	}

	// The slow parts that do not need JetStream run meanwhile.
	var wg sync.WaitGroup
	var (
		instances []Instance
		metrics   map[string]*instanceMetrics
		rows      map[int]shardRows
		servers   []Server
		columns   map[string]map[string]bool
	)
	wg.Go(func() { instances, metrics = c.instances(ctx) })
	wg.Go(func() { rows, servers, columns = c.clickHouse(ctx) })
	js, err := c.jetStream(ctx, r)
	var docs map[string]schema.Snapshot
	if err == nil {
		if docs, err = c.schemas(ctx); err != nil {
			r.SchemaUnreadable, err = err.Error(), nil
		}
	}
	wg.Wait()
	if err != nil {
		return nil, err
	}
	r.Instances, r.ClickHouse = instances, servers
	r.Schemas = tableSchemas(docs, columns, metrics, c.cfg.SchemaTable)

	n := c.cfg.Shards
	if n == 0 {
		n = js.maxShard + 1
		for k := range rows {
			n = max(n, k+1)
		}
	}
	for k := range n {
		s := Shard{Shard: k, Events: js.events[k], Batches: js.batches[k]}
		s.BatcherOwner = owner(r.Ownership, js.leases, metrics, "batcher", k)
		s.SinkOwner = owner(r.Ownership, js.leases, metrics, "sink", k)
		rw, ok := rows[k]
		if !ok && len(c.ch) > 0 && allAnswered(servers) {
			rw, ok = shardRows{}, true // no rows yet
		}
		if ok {
			s.Watermark, s.Rows = &rw.watermark, &rw.rows
			if prev, ok := c.prevRows[k]; ok && rw.rows >= prev {
				if dt := r.Time.Sub(c.prevTime).Seconds(); dt > 0 {
					rate := float64(rw.rows-prev) / dt
					s.RowsPerSecond = &rate
				}
			}
		} else {
			if wm, ok := sinkWatermark(metrics, k); ok {
				s.Watermark = &wm
			}
		}
		if lb := js.lastAck[k]; lb != nil {
			s.LastInsert = lb
		}
		for _, svc := range []string{"batcher", "sink"} {
			s.DeadLetters += r.DeadLetters[streams.DeadLetterSubject(svc, k)]
		}
		r.Shards = append(r.Shards, s)
	}
	c.prevTime, c.prevRows = r.Time, map[int]uint64{}
	for _, s := range r.Shards {
		if s.Rows != nil {
			c.prevRows[s.Shard] = *s.Rows
		}
	}
	return r, nil
}

// Judge sets r's Problems and Healthy by Assess, and its Warnings by
// Warn.
func (r *Report) Judge(th Thresholds) {
	r.Problems = Assess(*r, th)
	if r.Problems == nil {
		r.Problems = []Problem{}
	}
	r.Warnings = Warn(*r, th)
	if r.Warnings == nil {
		r.Warnings = []Problem{}
	}
	r.Healthy = len(r.Problems) == 0
}

// jsState is what JetStream says about the shards.
type jsState struct {
	events, batches map[int]Backlog
	// lastAck is when each shard's sink consumer last acked.
	lastAck map[int]*time.Time
	// leases maps <service>.shard.<k> to its holder.
	leases   map[string]string
	maxShard int
}

func (c *Collector) jetStream(ctx context.Context, r *Report) (*jsState, error) {
	st := &jsState{events: map[int]Backlog{}, batches: map[int]Backlog{}, lastAck: map[int]*time.Time{}, leases: map[string]string{}, maxShard: -1}
	for _, name := range []string{streams.Ingest, streams.Events, streams.Batches, streams.DeadLetter} {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		s, err := c.js.Stream(rctx, name)
		var info *jetstream.StreamInfo
		if err == nil {
			if name == streams.DeadLetter {
				info, err = s.Info(rctx, jetstream.WithSubjectFilter("deadletter.>"))
			} else {
				info = s.CachedInfo()
			}
		}
		cancel()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			r.Streams = append(r.Streams, Stream{Name: name, Missing: true})
			continue
		}
		if err != nil {
			r.Streams = append(r.Streams, Stream{Name: name, Unreadable: err.Error()})
			continue
		}
		r.Streams = append(r.Streams, streamOf(info))
		var err2 error
		switch name {
		case streams.Ingest:
			r.Ingest, err2 = c.ingestBacklog(ctx, s, info)
		case streams.Events:
			err2 = c.shardBacklogs(ctx, s, "events.shard.", false, st)
		case streams.Batches:
			err2 = c.shardBacklogs(ctx, s, "batches.shard.", true, st)
		case streams.DeadLetter:
			maps.Copy(r.DeadLetters, info.State.Subjects)
		}
		if err2 != nil {
			r.Streams[len(r.Streams)-1].Unreadable = err2.Error()
		}
	}
	if unreadable := func() bool {
		for _, s := range r.Streams {
			if s.Unreadable == "" {
				return false
			}
		}
		return true
	}(); unreadable {
		return nil, fmt.Errorf("no stream could be read: %s: %s", r.Streams[0].Name, r.Streams[0].Unreadable)
	}
	if err := c.leases(ctx, st); err != nil {
		r.LeasesUnreadable = err.Error()
		for _, svc := range []string{"batcher", "sink"} {
			r.Ownership[svc] = "unknown"
		}
		return st, nil
	}
	for _, svc := range []string{"batcher", "sink"} {
		r.Ownership[svc] = "static"
	}
	for key := range st.leases {
		svc, rest, _ := strings.Cut(key, ".")
		if svc == "members" {
			svc, _, _ = strings.Cut(rest, ".")
		} else if k, ok := shardOf(key, svc+".shard."); ok {
			st.maxShard = max(st.maxShard, k)
		}
		if _, known := r.Ownership[svc]; known {
			r.Ownership[svc] = "lease"
		}
	}
	return st, nil
}

func streamOf(info *jetstream.StreamInfo) Stream {
	s := Stream{
		Name: info.Config.Name, Messages: info.State.Msgs, Bytes: info.State.Bytes,
		MaxBytes: info.Config.MaxBytes, MaxMsgs: info.Config.MaxMsgs, Replicas: max(info.Config.Replicas, 1),
	}
	ci := info.Cluster
	if ci == nil {
		// A server without clustering holds its one replica.
		s.Current = 1
		return s
	}
	s.Leader = ci.Leader
	if ci.Leader != "" {
		s.Current = 1
	}
	for _, p := range ci.Replicas {
		switch {
		case p.Current && !p.Offline:
			s.Current++
		case p.Offline:
			s.Behind = append(s.Behind, p.Name+" (offline)")
		default:
			s.Behind = append(s.Behind, fmt.Sprintf("%s (%d behind)", p.Name, p.Lag))
		}
	}
	return s
}

// ingestBacklog is what the partitioner's consumer has still to deliver
// or have acked. INGEST is a work queue, yet its message count is not the
// backlog: a server killed between an ack and the removal can keep
// messages the consumer has acked (its ack floor past them), which
// nothing will deliver again. Without a consumer, every message waits.
func (c *Collector) ingestBacklog(ctx context.Context, s jetstream.Stream, info *jetstream.StreamInfo) (Backlog, error) {
	consumers, err := c.consumers(ctx, s)
	if err != nil {
		return Backlog{Pending: info.State.Msgs}, err
	}
	if len(consumers) == 0 {
		b := Backlog{Pending: info.State.Msgs}
		if b.Pending > 0 && !info.State.FirstTime.IsZero() {
			t := info.State.FirstTime.UTC()
			b.Oldest = &t
		}
		return b, nil
	}
	var b Backlog
	floor := uint64(math.MaxUint64)
	for _, ci := range consumers {
		b.Consumer = ci.Name
		b.Pending += ci.NumPending + uint64(max(ci.NumAckPending, 0))
		b.LastProgress = later(b.LastProgress, ci.AckFloor.Last)
		floor = min(floor, ci.AckFloor.Stream)
	}
	if b.Pending > 0 {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		msg, err := s.GetMsg(rctx, floor+1, jetstream.WithGetMsgSubject(">"))
		cancel()
		switch {
		case err == nil:
			t := msg.Time.UTC()
			b.Oldest = &t
		case errors.Is(err, jetstream.ErrMsgNotFound):
		default:
			return b, fmt.Errorf("oldest waiting message of %s: %w", streams.Ingest, err)
		}
	}
	return b, nil
}

// shardBacklogs reads, per shard subject (prefix<k>), what its consumer
// has still to deliver or have acked. EVENTS: the batcher reads each
// shard with an ordered consumer that a restart replaces, and the old one
// lingers until its inactivity threshold, so the least pending per
// subject is the batcher's. BATCHES: each shard's durable sink consumer.
func (c *Collector) shardBacklogs(ctx context.Context, s jetstream.Stream, prefix string, acked bool, st *jsState) error {
	consumers, err := c.consumers(ctx, s)
	if err != nil {
		return err
	}
	chosen := map[int]*jetstream.ConsumerInfo{}
	for _, ci := range consumers {
		subjects := append([]string{ci.Config.FilterSubject}, ci.Config.FilterSubjects...)
		for _, subj := range subjects {
			k, ok := shardOf(subj, prefix)
			if !ok {
				continue
			}
			st.maxShard = max(st.maxShard, k)
			prev, seen := chosen[k]
			switch {
			case !seen:
				chosen[k] = ci
			case acked && ci.Name == sink.ConsumerName(k):
				chosen[k] = ci
			case !acked && ci.NumPending < prev.NumPending:
				chosen[k] = ci
			}
		}
	}
	for k, ci := range chosen {
		b := Backlog{Consumer: ci.Name, Pending: ci.NumPending + uint64(max(ci.NumAckPending, 0))}
		start := ci.Delivered.Stream + 1
		b.LastProgress = later(nil, ci.Delivered.Last)
		if acked {
			start = ci.AckFloor.Stream + 1
			b.LastProgress = later(nil, ci.AckFloor.Last)
			st.lastAck[k] = b.LastProgress
		}
		if b.Pending > 0 {
			rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
			msg, err := s.GetMsg(rctx, start, jetstream.WithGetMsgSubject(prefix+strconv.Itoa(k)))
			cancel()
			switch {
			case err == nil:
				t := msg.Time.UTC()
				b.Oldest = &t
			case errors.Is(err, jetstream.ErrMsgNotFound):
			default:
				return fmt.Errorf("oldest waiting message of %s%d: %w", prefix, k, err)
			}
		}
		if acked {
			st.batches[k] = b
		} else {
			st.events[k] = b
		}
	}
	return nil
}

func (c *Collector) consumers(ctx context.Context, s jetstream.Stream) ([]*jetstream.ConsumerInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	lister := s.ListConsumers(rctx)
	var out []*jetstream.ConsumerInfo
	for ci := range lister.Info() {
		out = append(out, ci)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("consumers of %s: %w", s.CachedInfo().Config.Name, err)
	}
	return out, nil
}

// leases reads every key of the lease bucket with its value; no bucket
// means no service runs in lease mode.
func (c *Collector) leases(ctx context.Context, st *jsState) error {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	kv, err := c.js.KeyValue(rctx, lease.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lease bucket %s: %w", lease.Bucket, err)
	}
	w, err := kv.WatchAll(rctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("lease bucket %s: %w", lease.Bucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil { // nil marks the end of the current values
				return nil
			}
			st.leases[e.Key()] = string(e.Value())
		case <-rctx.Done():
			return fmt.Errorf("lease bucket %s: %w", lease.Bucket, rctx.Err())
		}
	}
}

// owner names who works on shard k of svc.
func owner(mode map[string]string, leases map[string]string, metrics map[string]*instanceMetrics, svc string, k int) string {
	if mode[svc] == "unknown" {
		return "?"
	}
	if mode[svc] == "lease" {
		holder := leases[svc+".shard."+strconv.Itoa(k)]
		for name, m := range metrics {
			if holder != "" && m.service == svc && m.leaseID == holder {
				return name // the admin name of the process holding it
			}
		}
		return holder
	}
	var names []string
	asked := false
	for name, m := range metrics {
		if m.service != svc {
			continue
		}
		asked = true
		if m.shards[k] {
			names = append(names, name)
		}
	}
	if !asked {
		return "static"
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

func shardOf(subject, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok {
		return 0, false
	}
	k, err := strconv.Atoi(rest)
	return k, err == nil && k >= 0
}

func later(a, b *time.Time) *time.Time {
	if b == nil || (a != nil && !b.After(*a)) {
		return a
	}
	t := b.UTC()
	return &t
}

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

func allAnswered(servers []Server) bool {
	for _, s := range servers {
		if s.Error != "" {
			return false
		}
	}
	return true
}

// shardRows is what ClickHouse holds of a shard.
type shardRows struct{ watermark, rows uint64 }

// chServer is one ClickHouse shard server entry and its replicas'
// connections, opened once and kept.
type chServer struct {
	entry    string
	replicas []string
	conns    []driver.Conn
}

func (s *chServer) close() error {
	var errs []error
	for _, c := range s.conns {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	s.conns = nil
	return errors.Join(errs...)
}

// clickHouse asks every server, the first of its replicas that answers,
// for each shard's watermark and row count; and every replica that
// answers for the columns of its events_local, by address.
func (c *Collector) clickHouse(ctx context.Context) (map[int]shardRows, []Server, map[string]map[string]bool) {
	rows := map[int]shardRows{}
	columns := map[string]map[string]bool{}
	var servers []Server
	for _, s := range c.ch {
		srv := Server{Addr: s.entry}
		got, failed, err := c.queryServer(ctx, s)
		if err != nil {
			srv.Error = err.Error()
		}
		for k, r := range got {
			prev := rows[k]
			rows[k] = shardRows{watermark: max(prev.watermark, r.watermark), rows: prev.rows + r.rows}
		}
		servers = append(servers, srv)
		for i, addr := range s.replicas {
			if failed[i] {
				continue // not asked twice in one look
			}
			if cols, err := c.replicaColumns(ctx, s, i); err == nil {
				columns[addr] = cols
			}
		}
	}
	return rows, servers, columns
}

// queryServer reads the shards' rows from the first replica of s that
// answers; failed are the replicas that did not.
func (c *Collector) queryServer(ctx context.Context, s *chServer) (got map[int]shardRows, failed map[int]bool, err error) {
	query := fmt.Sprintf("SELECT shard, max(seq), count() FROM %s.events_local GROUP BY shard", c.cfg.Database)
	failed = map[int]bool{}
	var errs []error
	for i, addr := range s.replicas {
		conn, err := c.conn(s, i)
		if err != nil {
			failed[i] = true
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		got, err := queryRows(ctx, conn, query, c.cfg.Timeout)
		if err == nil {
			return got, failed, nil
		}
		failed[i] = true
		if len(s.replicas) > 1 {
			err = fmt.Errorf("%s: %w", addr, err)
		}
		errs = append(errs, err)
	}
	return nil, failed, errors.Join(errs...)
}

// conn is the connection to replica i of s, opened at its first use.
func (c *Collector) conn(s *chServer, i int) (driver.Conn, error) {
	if s.conns == nil {
		s.conns = make([]driver.Conn, len(s.replicas))
	}
	if s.conns[i] == nil {
		conn, err := clickhouse.Open(&clickhouse.Options{
			Addr:        []string{s.replicas[i]},
			Auth:        clickhouse.Auth{Username: c.cfg.ClickHouseUser, Password: c.cfg.ClickHousePassword},
			DialTimeout: c.cfg.Timeout,
		})
		if err != nil {
			return nil, err
		}
		s.conns[i] = conn
	}
	return s.conns[i], nil
}

// replicaColumns reads the column names of events_local on replica i of
// s; none when the table does not exist there.
func (c *Collector) replicaColumns(ctx context.Context, s *chServer, i int) (map[string]bool, error) {
	conn, err := c.conn(s, i)
	if err != nil {
		return nil, err
	}
	qctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	rs, err := conn.Query(qctx, "SELECT name FROM system.columns WHERE database = ? AND table = 'events_local'", c.cfg.Database)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := map[string]bool{}
	for rs.Next() {
		var name string
		if err := rs.Scan(&name); err != nil {
			return nil, err
		}
		out[name] = true
	}
	return out, rs.Err()
}

func queryRows(ctx context.Context, conn driver.Conn, query string, timeout time.Duration) (map[int]shardRows, error) {
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rs, err := conn.Query(qctx, query)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := map[int]shardRows{}
	for rs.Next() {
		var (
			k        uint16
			wm, rows uint64
		)
		if err := rs.Scan(&k, &wm, &rows); err != nil {
			return nil, err
		}
		out[int(k)] = shardRows{watermark: wm, rows: rows}
	}
	return out, rs.Err()
}
