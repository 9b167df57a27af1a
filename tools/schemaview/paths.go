package schemaview

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/schema"
)

// Query bounds `surge schema conflicts` and `unpromoted`.
type Query struct {
	// Since is the earliest received_at counted.
	Since time.Time
	// Tenant, when set, counts its rows only.
	Tenant string
	// Limit is the most paths listed; 0 lists them all.
	Limit int
	// Sample is the most rows whose _conflicts are read (conflicts only);
	// DefaultSample when zero.
	Sample int
}

// DefaultSample is the most rows whose _conflicts a look reads.
const DefaultSample = 100_000

// shardPaths bounds the paths read from one shard when the Distributed
// table cannot answer and each shard's counts are merged here.
const shardPaths = 100_000

// maxSamples is the most distinct values kept per conflicting path.
const maxSamples = 3

// Conflicts is `surge schema conflicts`: the paths whose values did not fit
// their column, from the _conflicts of a sample of the rows received since
// Since.
type Conflicts struct {
	Since  time.Time `json:"since"`
	Tenant string    `json:"tenant,omitempty"`
	// Rows counts every row received since Since with a conflict.
	Rows uint64 `json:"rows"`
	// Sampled counts the rows whose _conflicts were read, at most
	// SampleLimit: the counts of Paths are over these.
	Sampled     int `json:"sampled"`
	SampleLimit int `json:"sample_limit"`
	// Unreadable counts the sampled rows whose _conflicts is not a JSON
	// object.
	Unreadable int `json:"unreadable,omitempty"`
	// Distinct counts the paths found, Paths lists the first Limit of them,
	// the most frequent first.
	Distinct int            `json:"distinct"`
	Paths    []ConflictPath `json:"paths"`
	// From names the table read: events, or events_local of each shard
	// when the Distributed table could not answer.
	From  string   `json:"from"`
	Notes []string `json:"notes,omitempty"`
}

// ConflictPath is one property path whose values did not fit its column.
type ConflictPath struct {
	Path string `json:"path"`
	// Column and Type are the registry's column for the path, if any.
	Column string `json:"column,omitempty"`
	Type   string `json:"type,omitempty"`
	// Rows counts the sampled rows with a conflict at the path.
	Rows int `json:"rows"`
	// Samples are up to three distinct original values, as JSON.
	Samples []json.RawMessage `json:"samples"`
}

// Unpromoted is `surge schema unpromoted`: the paths left out of the typed
// columns in the rows received since Since.
type Unpromoted struct {
	Since  time.Time `json:"since"`
	Tenant string    `json:"tenant,omitempty"`
	// Rows counts the rows received since Since; WithUnpromoted those that
	// list a path.
	Rows           uint64 `json:"rows"`
	WithUnpromoted uint64 `json:"with_unpromoted"`
	// Paths lists the first Limit paths, the most frequent first.
	Paths []UnpromotedPath `json:"paths"`
	// From names the table read: events, or events_local of each shard.
	From string `json:"from"`
	// Truncated says a shard listed more paths than were read from it, so
	// the merged counts may fall short (events_local only).
	Truncated bool     `json:"truncated,omitempty"`
	Notes     []string `json:"notes,omitempty"`
}

// UnpromotedPath is one path and the rows that left it out.
type UnpromotedPath struct {
	Path string `json:"path"`
	Rows uint64 `json:"rows"`
}

// filter is the WHERE clause of q (received since, tenant) and its
// arguments, after extra conditions.
func (q Query) filter(extra ...string) (string, []any) {
	conds := append(extra, "received_at >= toDateTime(?)")
	args := []any{q.Since.Unix()}
	if q.Tenant != "" {
		conds, args = append(conds, "tenant = ?"), append(args, q.Tenant)
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// Conflicts reads the conflicting paths of the rows q selects; doc, when
// not nil, names each path's column.
func (s *Source) Conflicts(ctx context.Context, q Query, doc *schema.Doc) (*Conflicts, error) {
	if q.Sample <= 0 {
		q.Sample = DefaultSample
	}
	out := &Conflicts{Since: q.Since.UTC(), Tenant: q.Tenant, SampleLimit: q.Sample, Paths: []ConflictPath{}}
	where, args := q.filter("_conflicts != ''")
	type part struct {
		rows   uint64
		values []string
	}
	parts, from, notes, err := across(s, func(srv Server, table string, shards int) (part, error) {
		var p part
		err := s.query(ctx, srv, func(rows driver.Rows) error { return rows.Scan(&p.rows) },
			"SELECT count() FROM "+s.table(table)+where, args...)
		if err != nil {
			return p, err
		}
		// Each shard reads its share of the sample.
		limit := max(q.Sample/shards, 1)
		err = s.query(ctx, srv, func(rows driver.Rows) error {
			var v string
			if err := rows.Scan(&v); err != nil {
				return err
			}
			p.values = append(p.values, v)
			return nil
		}, "SELECT _conflicts FROM "+s.table(table)+where+" LIMIT ?", append(slices.Clone(args), limit)...)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("conflicts: %w", err)
	}
	out.From, out.Notes = from, notes

	index := map[string]string{}
	if doc != nil {
		index = doc.Index()
	}
	byPath := map[string]*ConflictPath{}
	for _, p := range parts {
		out.Rows += p.rows
		for _, v := range p.values {
			out.Sampled++
			var obj map[string]json.RawMessage
			if err := json.Unmarshal([]byte(v), &obj); err != nil || obj == nil {
				out.Unreadable++
				continue
			}
			for path, val := range obj {
				cp := byPath[path]
				if cp == nil {
					cp = &ConflictPath{Path: path, Samples: []json.RawMessage{}}
					if name, ok := index[path]; ok {
						cp.Column, cp.Type = name, doc.Columns[name].Type
					}
					byPath[path] = cp
				}
				cp.Rows++
				var compact bytes.Buffer
				if json.Compact(&compact, val) == nil {
					val = compact.Bytes()
				}
				if len(cp.Samples) < maxSamples && !slices.ContainsFunc(cp.Samples, func(s json.RawMessage) bool { return bytes.Equal(s, val) }) {
					cp.Samples = append(cp.Samples, val)
				}
			}
		}
	}
	out.Distinct = len(byPath)
	for _, cp := range byPath {
		// Sorted, so a look shows the same values whatever order the
		// shards answered in.
		slices.SortFunc(cp.Samples, func(a, b json.RawMessage) int { return bytes.Compare(a, b) })
		out.Paths = append(out.Paths, *cp)
	}
	slices.SortFunc(out.Paths, func(a, b ConflictPath) int {
		if a.Rows != b.Rows {
			return b.Rows - a.Rows
		}
		return strings.Compare(a.Path, b.Path)
	})
	if q.Limit > 0 && len(out.Paths) > q.Limit {
		out.Paths = out.Paths[:q.Limit]
	}
	return out, nil
}

// Unpromoted counts the paths left out of the typed columns in the rows q
// selects.
func (s *Source) Unpromoted(ctx context.Context, q Query) (*Unpromoted, error) {
	out := &Unpromoted{Since: q.Since.UTC(), Tenant: q.Tenant, Paths: []UnpromotedPath{}}
	where, args := q.filter()
	type part struct {
		rows, with uint64
		paths      []UnpromotedPath
		truncated  bool
	}
	parts, from, notes, err := across(s, func(srv Server, table string, shards int) (part, error) {
		var p part
		err := s.query(ctx, srv, func(rows driver.Rows) error { return rows.Scan(&p.rows, &p.with) },
			"SELECT count(), countIf(length(_unpromoted) > 0) FROM "+s.table(table)+where, args...)
		if err != nil {
			return p, err
		}
		// Across the shards here, so a shard's top paths cannot be merged
		// exactly: read many.
		limit := q.Limit
		if table == LocalTable || limit <= 0 {
			limit = shardPaths
		}
		err = s.query(ctx, srv, func(rows driver.Rows) error {
			var up UnpromotedPath
			if err := rows.Scan(&up.Path, &up.Rows); err != nil {
				return err
			}
			p.paths = append(p.paths, up)
			return nil
		}, "SELECT arrayJoin(_unpromoted) AS path, count() FROM "+s.table(table)+where+
			" GROUP BY path ORDER BY count() DESC, path LIMIT ?", append(slices.Clone(args), limit)...)
		p.truncated = table == LocalTable && len(p.paths) == limit
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("unpromoted: %w", err)
	}
	out.From, out.Notes = from, notes

	byPath := map[string]uint64{}
	for _, p := range parts {
		out.Rows += p.rows
		out.WithUnpromoted += p.with
		out.Truncated = out.Truncated || p.truncated
		for _, up := range p.paths {
			byPath[up.Path] += up.Rows
		}
	}
	for path, n := range byPath {
		out.Paths = append(out.Paths, UnpromotedPath{Path: path, Rows: n})
	}
	slices.SortFunc(out.Paths, func(a, b UnpromotedPath) int {
		if a.Rows != b.Rows {
			if a.Rows > b.Rows {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Path, b.Path)
	})
	if q.Limit > 0 && len(out.Paths) > q.Limit {
		out.Paths = out.Paths[:q.Limit]
	}
	return out, nil
}

// across runs q once on the Distributed table, on the first server where
// it answers; when it answers nowhere (a Distributed table without the
// column, a shard down), q runs on each shard's events_local, the first
// replica that answers, and each shard's result is returned. from names
// the table read; notes say what was left out.
func across[T any](s *Source, q func(srv Server, table string, shards int) (T, error)) (results []T, from string, notes []string, err error) {
	var one T
	errDist := s.first(func(srv Server) error {
		var err error
		one, err = q(srv, DistributedTable, 1)
		return err
	})
	if errDist == nil {
		return []T{one}, DistributedTable, nil, nil
	}
	notes = append(notes, fmt.Sprintf("%s did not answer (%s); read each shard's %s", DistributedTable, firstLine(errDist), LocalTable))
	var errs []error
	for k, shard := range s.Shards {
		err := shardFirst(shard, func(srv Server) error {
			r, err := q(srv, LocalTable, len(s.Shards))
			if err == nil {
				results = append(results, r)
			}
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", k, err))
			notes = append(notes, fmt.Sprintf("shard %d did not answer (%s): its rows are left out", k, firstLine(err)))
		}
	}
	if len(results) == 0 {
		return nil, "", nil, errors.Join(append([]error{errDist}, errs...)...)
	}
	return results, LocalTable, notes, nil
}

// firstLine is the first line of err's text: a joined error's first cause.
func firstLine(err error) string {
	line, _, _ := strings.Cut(err.Error(), "\n")
	return line
}
