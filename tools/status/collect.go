package status

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
