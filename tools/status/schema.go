package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/schema"
)

// schemas reads every table's schema document from the schema bucket,
// by table name; none when the bucket does not exist (no batcher with
// typed columns has started). It never creates the bucket.
func (c *Collector) schemas(ctx context.Context) (map[string]schema.Snapshot, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	kv, err := c.js.KeyValue(rctx, schema.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("schema bucket %s: %w", schema.Bucket, err)
	}
	w, err := kv.WatchAll(rctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("schema bucket %s: %w", schema.Bucket, err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]schema.Snapshot{}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil { // nil marks the end of the current values
				return out, nil
			}
			table, ok := strings.CutPrefix(e.Key(), schema.Key(""))
			if !ok {
				continue
			}
			doc := &schema.Doc{}
			if err := json.Unmarshal(e.Value(), doc); err != nil {
				return nil, fmt.Errorf("schema %s revision %d: %w", e.Key(), e.Revision(), err)
			}
			out[table] = schema.Snapshot{Doc: doc, Rev: e.Revision()}
		case <-rctx.Done():
			return nil, fmt.Errorf("schema bucket %s: %w", schema.Bucket, rctx.Err())
		}
	}
}

// tableSchemas sums up each table's schema, by name: its columns against
// the lowest limit a batcher reports (else the default), its failed
// columns, its conflicts, and for checked (the table landing in
// events_local) the columns missing on a ClickHouse server, from columns:
// each answering replica's column names by address.
func tableSchemas(docs map[string]schema.Snapshot, columns map[string]map[string]bool, metrics map[string]*instanceMetrics, checked string) []TableSchema {
	tables := make([]string, 0, len(docs))
	for t := range docs {
		tables = append(tables, t)
	}
	slices.Sort(tables)
	addrs := make([]string, 0, len(columns))
	for a := range columns {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)

	out := []TableSchema{}
	for _, table := range tables {
		snap := docs[table]
		ts := TableSchema{Table: table, Revision: snap.Rev, Columns: len(snap.Doc.Columns),
			Limit: schema.DefaultConfig().MaxColumns, LimitFrom: "default"}
		var conflicts, rows uint64
		reported := false
		for _, m := range metrics {
			if limit, ok := m.columnLimit[table]; ok {
				if ts.LimitFrom == "default" || limit < ts.Limit {
					ts.Limit, ts.LimitFrom = limit, "batchers"
				}
			}
			if n, ok := m.conflicts[table]; ok {
				conflicts, rows, reported = conflicts+n, rows+m.rows, true
			}
		}
		if reported {
			ts.Conflicts, ts.Rows = &conflicts, &rows
		}
		for name := range snap.Doc.Failed {
			ts.Failed = append(ts.Failed, name)
		}
		slices.Sort(ts.Failed)

		ts.Checked = table == checked && len(columns) > 0
		if ts.Checked {
			names := make([]string, 0, len(snap.Doc.Columns))
			for name := range snap.Doc.Columns {
				if _, failed := snap.Doc.Failed[name]; !failed {
					names = append(names, name)
				}
			}
			slices.Sort(names)
			for _, name := range names {
				col := snap.Doc.Columns[name]
				p := PendingColumn{Name: name, Path: col.Path, Added: col.Added}
				for _, addr := range addrs {
					if !columns[addr][name] {
						p.Missing = append(p.Missing, addr)
					}
				}
				if len(p.Missing) > 0 {
					ts.Pending = append(ts.Pending, p)
				}
			}
		}
		out = append(out, ts)
	}
	return out
}
