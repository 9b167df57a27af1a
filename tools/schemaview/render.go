package schemaview

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// JSON writes v (a *Columns, *Conflicts or *Unpromoted) as indented JSON.
func JSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// RenderColumns writes c as a table, one line per column:
//
//	NAME  PATH  TYPE  CLICKHOUSE  ORIGIN  TENANT  ADDED  FILL
//
// CLICKHOUSE is each distinct type the servers that answered hold
// ("MISSING" where one lacks the column), flagged DIFFERS when a type
// holds another kind than the registry's, DDL FAILED when the registry
// gave up adding it and "(not in events)" when a Distributed table lacks
// it; ORIGIN says "NOT IN REGISTRY" for a column only ClickHouse holds.
// After the table, a line per column says which server holds what where
// they differ, and then come the failed DDL and the notes.
func RenderColumns(w io.Writer, c *Columns) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	rev := "no schema written yet"
	if c.Revision > 0 {
		rev = "revision " + strconv.FormatUint(c.Revision, 10)
	}
	rows := "every tenant"
	if c.Tenant != "" {
		rows = "tenant " + c.Tenant
	}
	p("table %s (%s), %s.%s on %d %s; fill over %s\n", c.Table, rev, c.Database, LocalTable,
		len(c.Servers), plural(len(c.Servers), "server"), rows)
	for _, s := range c.Servers {
		if s.Error != "" {
			p("server %s (shard %d) did not answer: %s\n", s.Addr, s.Shard, s.Error)
		}
	}
	p("\nNAME\tPATH\tTYPE\tCLICKHOUSE\tORIGIN\tTENANT\tADDED\tFILL\n")
	for _, col := range c.Columns {
		origin := string(col.Origin)
		if !col.InRegistry {
			origin = "NOT IN REGISTRY"
		}
		added := "-"
		if col.Added != nil && !col.Added.IsZero() {
			added = col.Added.UTC().Format(time.RFC3339)
		}
		p("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", col.Name, dash(col.Path), dash(col.Type), clickHouseCell(col),
			dash(origin), dash(col.Tenant), added, fillCell(col.Fill))
	}
	if len(c.Columns) == 0 {
		p("(no typed columns)\n")
	}
	// After the table: a line without tabs would end its alignment.
	for _, col := range c.Columns {
		if line := serverLine(col); line != "" {
			p("%s: %s\n", col.Name, line)
		}
		if col.Failed != "" {
			p("%s: DDL failed for good, batchers no longer fill it: %s\n", col.Name, col.Failed)
		}
	}
	for _, n := range c.Notes {
		p("note: %s\n", n)
	}
	return tw.Flush()
}

// clickHouseCell is a column's ClickHouse types in short: each distinct
// one in server order ("MISSING" for none), then its flags; the servers
// behind them follow the table (serverLine).
func clickHouseCell(col Column) string {
	if len(col.ClickHouse) == 0 {
		return "?"
	}
	var types []string
	for _, st := range col.ClickHouse {
		if t := orMissing(st.Type); !slices.Contains(types, t) {
			types = append(types, t)
		}
	}
	s := strings.Join(types, " / ")
	if len(col.Differs) > 0 {
		s += " DIFFERS"
	}
	if col.Failed != "" {
		s += " DDL FAILED"
	}
	if len(col.NotInDistributed) > 0 {
		s += " (not in " + DistributedTable + ")"
	}
	return s
}

// serverLine says which server holds which type of col, when they do not
// all hold the same, and which servers' Distributed table lacks it; ""
// when there is nothing to say.
func serverLine(col Column) string {
	var parts []string
	same := true
	for _, st := range col.ClickHouse {
		same = same && st.Type == col.ClickHouse[0].Type
	}
	if !same || len(col.Differs) > 0 {
		types := make([]string, len(col.ClickHouse))
		for i, st := range col.ClickHouse {
			types[i] = st.Addr + " " + orMissing(st.Type)
			if slices.Contains(col.Differs, st.Addr) {
				types[i] += " (not " + col.Type + ")"
			}
		}
		parts = append(parts, strings.Join(types, ", "))
	}
	if len(col.NotInDistributed) > 0 {
		parts = append(parts, "not in "+DistributedTable+" on "+strings.Join(col.NotInDistributed, ", "))
	}
	return strings.Join(parts, "; ")
}

func fillCell(f *Fill) string {
	if f == nil {
		return "-"
	}
	if f.Rows == 0 {
		return "0 rows"
	}
	return fmt.Sprintf("%.1f%% (%s/%s)", 100*f.Rate, count(f.Filled), count(f.Rows))
}

// RenderConflicts writes c as a table of paths, the most frequent first,
// each with the column it conflicts with and up to three original values.
func RenderConflicts(w io.Writer, c *Conflicts) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	p("conflicts since %s%s: %s %s with conflicts in %s; read a sample of %s (at most %s)",
		c.Since.Format(time.RFC3339), tenantOf(c.Tenant), count(c.Rows), plural(int(c.Rows), "row"), c.From,
		count(uint64(c.Sampled)), count(uint64(c.SampleLimit)))
	if c.Unreadable > 0 {
		p(", %d unreadable", c.Unreadable)
	}
	p("\n")
	if len(c.Paths) > 0 {
		p("\nPATH\tCOLUMN\tROWS\tSAMPLES\n")
		for _, cp := range c.Paths {
			column := "-"
			if cp.Column != "" {
				column = cp.Column + " (" + cp.Type + ")"
			}
			samples := make([]string, len(cp.Samples))
			for i, s := range cp.Samples {
				samples[i] = string(s)
			}
			p("%s\t%s\t%s\t%s\n", cp.Path, column, count(uint64(cp.Rows)), strings.Join(samples, ", "))
		}
		if len(c.Paths) < c.Distinct {
			p("(%d of %d paths)\n", len(c.Paths), c.Distinct)
		}
	}
	for _, n := range c.Notes {
		p("note: %s\n", n)
	}
	return tw.Flush()
}

// RenderUnpromoted writes u as a table of paths, the most frequent first.
func RenderUnpromoted(w io.Writer, u *Unpromoted) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	p("unpromoted since %s%s: %s of %s %s in %s left paths out\n", u.Since.Format(time.RFC3339), tenantOf(u.Tenant),
		count(u.WithUnpromoted), count(u.Rows), plural(int(u.Rows), "row"), u.From)
	if len(u.Paths) > 0 {
		p("\nPATH\tROWS\n")
		for _, up := range u.Paths {
			p("%s\t%s\n", up.Path, count(up.Rows))
		}
	}
	if u.Truncated {
		p("note: a shard listed more than %s paths: counts may fall short\n", count(shardPaths))
	}
	for _, n := range u.Notes {
		p("note: %s\n", n)
	}
	return tw.Flush()
}

func tenantOf(t string) string {
	if t == "" {
		return ""
	}
	return ", tenant " + t
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func orMissing(t string) string {
	if t == "" {
		return "MISSING"
	}
	return t
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// count prints n with thousands separators.
func count(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
