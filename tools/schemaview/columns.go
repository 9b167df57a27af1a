package schemaview

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/schema"
)

// PathComment starts the comment the sink gives a property column where
// the server supports comments: "surge:path=/plan".
const PathComment = "surge:path="

// Columns is `surge schema ls`: every column the registry agreed on and
// every other column ClickHouse holds beside the base ones.
type Columns struct {
	// Table names the schema in the registry (its key is table.<Table>).
	Table string `json:"table"`
	// Revision is the registry's revision of the schema; 0 when none was
	// written yet.
	Revision uint64 `json:"revision"`
	Database string `json:"database"`
	// Tenant, when set, restricts the fill rates to its rows.
	Tenant string `json:"tenant,omitempty"`
	// Servers are every ClickHouse server asked, shard by shard.
	Servers []ServerState `json:"servers"`
	// Columns lists the registry's columns by name, then the columns only
	// ClickHouse holds, by name.
	Columns []Column `json:"columns"`
	// Notes say what the figures leave out.
	Notes []string `json:"notes,omitempty"`
}

// ServerState is one ClickHouse server and why it did not answer.
type ServerState struct {
	Addr  string `json:"addr"`
	Shard int    `json:"shard"`
	Error string `json:"error,omitempty"`
}

// Column is one typed column.
type Column struct {
	Name string `json:"name"`
	// Path is the property's JSON Pointer: the registry's, or for a column
	// only ClickHouse holds the one its comment names ("" without).
	Path string `json:"path"`
	// Type is the registry's logical kind (int64, array(string)...).
	Type string `json:"type,omitempty"`
	// CHType is the ClickHouse type the registry declares, when it is not
	// the kind's default.
	CHType string        `json:"ch_type,omitempty"`
	Origin schema.Origin `json:"origin,omitempty"`
	// Tenant is the tenant whose event introduced the column.
	Tenant string     `json:"tenant,omitempty"`
	Added  *time.Time `json:"added,omitempty"`
	// InRegistry is false for a column ClickHouse holds that the registry
	// does not know.
	InRegistry bool `json:"in_registry"`
	// Failed says why the column's DDL failed for good: batchers no longer
	// fill it.
	Failed string `json:"failed,omitempty"`
	// ClickHouse is the column's type in events_local on each server that
	// answered, "" where the table lacks it.
	ClickHouse []ServerType `json:"clickhouse"`
	// Missing lists the servers whose events_local lacks the column.
	Missing []string `json:"missing,omitempty"`
	// Differs lists the servers whose type holds another kind than the
	// registry's.
	Differs []string `json:"differs,omitempty"`
	// NotInDistributed lists the servers whose events_local has the column
	// and whose Distributed events table does not.
	NotInDistributed []string `json:"not_in_distributed,omitempty"`
	// Fill is how many rows hold a value; nil when no server holds the
	// column or none that does answered.
	Fill *Fill `json:"fill,omitempty"`
}

// ServerType is a column's type on one server.
type ServerType struct {
	Addr string `json:"addr"`
	Type string `json:"type"`
}

// Fill counts the rows that hold a value in a column: a non-NULL one, or
// for an array column a non-empty array (an absent array is empty, never
// NULL).
type Fill struct {
	Rows   uint64  `json:"rows"`
	Filled uint64  `json:"filled"`
	Rate   float64 `json:"rate"`
	// From names the table counted: events (one query across the shards)
	// or events_local (each shard's, where the Distributed table lacks the
	// column or some server does).
	From string `json:"from"`
}

// Columns lists the columns of snap's schema (named table in the
// registry) beside the ones each server holds, with their fill rates over
// tenant's rows (every row when tenant is empty). Servers that do not
// answer are part of the result; it fails only when none does.
func (s *Source) Columns(ctx context.Context, table string, snap schema.Snapshot, tenant string) (*Columns, error) {
	out := &Columns{Table: table, Revision: snap.Rev, Database: s.Database, Tenant: tenant, Columns: []Column{}}
	doc := snap.Doc
	if doc == nil {
		doc = &schema.Doc{}
	}

	// What each server holds, asked all at once.
	type look struct {
		srv   Server
		shard int
		cols  tableColumns
		err   error
	}
	var looks []*look
	for k, shard := range s.Shards {
		for _, srv := range shard {
			looks = append(looks, &look{srv: srv, shard: k})
		}
	}
	var wg sync.WaitGroup
	for _, l := range looks {
		wg.Go(func() { l.cols, l.err = s.columns(ctx, l.srv) })
	}
	wg.Wait()
	var answered []*look
	for _, l := range looks {
		st := ServerState{Addr: l.srv.Addr, Shard: l.shard}
		switch {
		case l.err != nil:
			st.Error = l.err.Error()
		case l.cols.local == nil:
			st.Error = fmt.Sprintf("no table %s.%s", s.Database, LocalTable)
		default:
			answered = append(answered, l)
		}
		out.Servers = append(out.Servers, st)
	}
	if len(answered) == 0 {
		return nil, fmt.Errorf("no ClickHouse server answered with %s.%s: %s", s.Database, LocalTable, out.Servers[0].Error)
	}
	for _, l := range answered {
		if l.cols.distributed == nil {
			out.Notes = append(out.Notes, fmt.Sprintf("%s has no table %s.%s", l.srv.Addr, s.Database, DistributedTable))
		}
	}

	// The registry's columns, then the others ClickHouse holds.
	names := make([]string, 0, len(doc.Columns)+len(doc.Failed))
	for name := range doc.Columns {
		names = append(names, name)
	}
	for name := range doc.Failed {
		if doc.Columns[name] == nil {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	extra := map[string]bool{}
	for _, l := range answered {
		for name := range l.cols.local {
			if _, ok := doc.Columns[name]; !ok && !batch.IsBaseColumn(name) && !slices.Contains(names, name) {
				extra[name] = true
			}
		}
	}
	extras := make([]string, 0, len(extra))
	for name := range extra {
		extras = append(extras, name)
	}
	slices.Sort(extras)

	for _, name := range append(names, extras...) {
		c := Column{Name: name, InRegistry: !extra[name], Failed: doc.Failed[name]}
		var kind batch.Kind
		if rc := doc.Columns[name]; rc != nil {
			added := rc.Added
			c.Path, c.Type, c.CHType, c.Origin, c.Tenant, c.Added = rc.Path, rc.Type, rc.CHType, rc.Origin, rc.Tenant, &added
			kind = rc.Kind()
		}
		for _, l := range answered {
			typ := l.cols.local[name]
			c.ClickHouse = append(c.ClickHouse, ServerType{Addr: l.srv.Addr, Type: typ})
			switch {
			case typ == "":
				c.Missing = append(c.Missing, l.srv.Addr)
				continue
			case kind != 0:
				if k, err := schema.DeclaredKind(typ); err != nil || k != kind {
					c.Differs = append(c.Differs, l.srv.Addr)
				}
			}
			if _, ok := l.cols.distributed[name]; !ok && l.cols.distributed != nil {
				c.NotInDistributed = append(c.NotInDistributed, l.srv.Addr)
			}
			if c.Path == "" {
				c.Path = strings.TrimPrefix(l.cols.comments[name], PathComment)
			}
		}
		out.Columns = append(out.Columns, c)
	}

	s.fill(ctx, out, answered[0].srv, func(addr string) tableColumns {
		for _, l := range answered {
			if l.srv.Addr == addr {
				return l.cols
			}
		}
		return tableColumns{}
	})
	for i := range out.Columns {
		if f := out.Columns[i].Fill; f != nil && f.Rows > 0 {
			f.Rate = float64(f.Filled) / float64(f.Rows)
		}
	}
	return out, nil
}

// fill counts each column's filled rows: in one query on the Distributed
// table for the columns every answering server holds and the Distributed
// table has too, else on each shard's events_local (the first replica
// that answers) for the rest, a shard without the column counting its
// rows as unfilled.
func (s *Source) fill(ctx context.Context, out *Columns, via Server, held func(addr string) tableColumns) {
	where, args := "", []any{}
	if out.Tenant != "" {
		where, args = " WHERE tenant = ?", []any{out.Tenant}
	}
	byName := map[string]*Column{}
	for i := range out.Columns {
		byName[out.Columns[i].Name] = &out.Columns[i]
	}

	// The Distributed table, on the first server that answered.
	distributed := held(via.Addr).distributed
	var everywhere []string
	for i := range out.Columns {
		c := &out.Columns[i]
		if _, ok := distributed[c.Name]; ok && len(c.Missing) == 0 && len(c.NotInDistributed) == 0 && len(c.ClickHouse) > 0 {
			everywhere = append(everywhere, c.Name)
		}
	}
	done := map[string]bool{}
	if len(everywhere) > 0 {
		counts, err := s.count(ctx, via, DistributedTable, everywhere, distributed, where, args)
		if err == nil {
			for i, name := range everywhere {
				byName[name].Fill = &Fill{Rows: counts[0], Filled: counts[i+1], From: DistributedTable}
				done[name] = true
			}
		} else {
			out.Notes = append(out.Notes, fmt.Sprintf("%s on %s: %v; fill rates counted on each shard's %s", DistributedTable, via.Addr, err, LocalTable))
		}
	}

	// The rest, shard by shard.
	var rest []string
	for _, c := range out.Columns {
		if !done[c.Name] && len(c.Missing) < len(c.ClickHouse) {
			rest = append(rest, c.Name)
		}
	}
	if len(rest) == 0 {
		return
	}
	for k, shard := range s.Shards {
		err := shardFirst(shard, func(srv Server) error {
			local := held(srv.Addr).local
			if local == nil {
				return fmt.Errorf("did not answer with %s", LocalTable)
			}
			var have []string
			for _, name := range rest {
				if local[name] != "" {
					have = append(have, name)
				}
			}
			counts, err := s.count(ctx, srv, LocalTable, have, local, where, args)
			if err != nil {
				return err
			}
			for _, name := range rest {
				c := byName[name]
				if c.Fill == nil {
					c.Fill = &Fill{From: LocalTable}
				}
				c.Fill.Rows += counts[0]
				if i := slices.Index(have, name); i >= 0 {
					c.Fill.Filled += counts[i+1]
				}
			}
			return nil
		})
		if err != nil {
			out.Notes = append(out.Notes, fmt.Sprintf("shard %d did not answer (%v): fill rates counted on %s leave its rows out", k, err, LocalTable))
		}
	}
}

// count runs SELECT count(), <filled of each column> on table of srv;
// types are the table's column types.
func (s *Source) count(ctx context.Context, srv Server, table string, names []string, types map[string]string, where string, args []any) ([]uint64, error) {
	exprs := []string{"count()"}
	for _, name := range names {
		if strings.HasPrefix(types[name], "Array(") {
			exprs = append(exprs, "countIf(length("+quote(name)+") > 0)")
		} else {
			exprs = append(exprs, "count("+quote(name)+")")
		}
	}
	counts := make([]uint64, len(exprs))
	err := s.query(ctx, srv, func(rows driver.Rows) error {
		ptrs := make([]any, len(counts))
		for i := range counts {
			ptrs[i] = &counts[i]
		}
		return rows.Scan(ptrs...)
	}, "SELECT "+strings.Join(exprs, ", ")+" FROM "+s.table(table)+where, args...)
	return counts, err
}
