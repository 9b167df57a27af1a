package status

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

// Render writes r as one screen of aligned tables: the verdict, the
// shards, the streams, the instances, the ClickHouse servers, the tables
// of typed columns and, last, the problems and the warnings.
func Render(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }

	verdict := "HEALTHY"
	if !r.Healthy {
		verdict = fmt.Sprintf("UNHEALTHY (%d %s)", len(r.Problems), plural(len(r.Problems), "problem"))
	}
	if n := len(r.Warnings); n > 0 {
		verdict += fmt.Sprintf(", %d %s", n, plural(n, "warning"))
	}
	p("surge status at %s, NATS %s: %s\n", r.Time.Format("2006-01-02 15:04:05 MST"), r.NATS, verdict)
	p("ownership: batcher %s, sink %s; partitioner: %s\n\n", r.Ownership["batcher"], r.Ownership["sink"], backlogLine(r.Ingest, r.Time, "INGEST"))

	p("SHARD\tBATCHER\tSINK\tEVENTS\tOLDEST\tBATCHES\tOLDEST\tWATERMARK\tROWS\tROWS/S\tLAST INSERT\tDEAD\n")
	for _, s := range r.Shards {
		p("%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", s.Shard,
			dash(s.BatcherOwner), dash(s.SinkOwner),
			pending(s.Events), oldest(s.Events, r.Time), pending(s.Batches), oldest(s.Batches, r.Time),
			optUint(s.Watermark), optUint(s.Rows), optRate(s.RowsPerSecond), ago(s.LastInsert, r.Time), s.DeadLetters)
	}

	p("\nSTREAM\tMESSAGES\tBYTES\tLIMIT\tUSED\tREPLICAS\n")
	for _, s := range r.Streams {
		if s.Missing {
			p("%s\tmissing\t\t\t\t\n", s.Name)
			continue
		}
		if s.Unreadable != "" && s.Replicas == 0 {
			p("%s\tunreadable\t\t\t\t%s\n", s.Name, s.Unreadable)
			continue
		}
		limit, used := "none", "-"
		if s.MaxBytes > 0 {
			limit = Bytes(uint64(s.MaxBytes))
			used = fmt.Sprintf("%.0f%%", 100*float64(s.Bytes)/float64(s.MaxBytes))
		}
		replicas := fmt.Sprintf("%d/%d current", s.Current, s.Replicas)
		if s.Leader != "" {
			replicas += ", leader " + s.Leader
		}
		if len(s.Behind) > 0 {
			replicas += "; behind: " + strings.Join(s.Behind, ", ")
		}
		p("%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, Count(s.Messages), Bytes(s.Bytes), limit, used, replicas)
	}
	if n, detail := deadLetterSummary(r.DeadLetters); n > 0 {
		p("dead letters: %s\n", detail)
	}

	if len(r.Instances) > 0 {
		p("\nINSTANCE\tADMIN\tREADY\n")
		for _, in := range r.Instances {
			ready := "ready"
			if !in.Ready {
				ready = "NOT READY: " + strings.Join(in.Reasons, "; ")
			}
			p("%s\t%s\t%s\n", in.Name, in.Addr, ready)
		}
	}
	if len(r.ClickHouse) > 0 {
		p("\nCLICKHOUSE\tANSWERS\n")
		for _, s := range r.ClickHouse {
			answer := "yes"
			if s.Error != "" {
				answer = "NO: " + s.Error
			}
			p("%s\t%s\n", s.Addr, answer)
		}
	}
	if len(r.Schemas) > 0 {
		p("\nTABLE\tREVISION\tCOLUMNS\tPENDING DDL\tFAILED\tCONFLICTS\n")
		for _, ts := range r.Schemas {
			columns := fmt.Sprintf("%d/%d", ts.Columns, ts.Limit)
			if ts.LimitFrom != "batchers" {
				columns += " (default limit)"
			}
			p("%s\t%d\t%s\t%s\t%d\t%s\n", ts.Table, ts.Revision, columns, pendingCell(ts, r.Time), len(ts.Failed), conflictsCell(ts))
		}
	}
	if len(r.Problems) > 0 {
		p("\nPROBLEMS\n")
		for _, pr := range r.Problems {
			p("  %s\n", pr)
		}
	}
	if len(r.Warnings) > 0 {
		p("\nWARNINGS\n")
		for _, w := range r.Warnings {
			p("  %s\n", w)
		}
	}
	return tw.Flush()
}

// pendingCell names the columns missing on some server, with how long
// ago each was agreed and on how many servers it is missing: "?" when
// ClickHouse was not checked.
func pendingCell(ts TableSchema, now time.Time) string {
	if !ts.Checked {
		return "?"
	}
	if len(ts.Pending) == 0 {
		return "none"
	}
	const shown = 3
	parts := make([]string, 0, shown+1)
	for _, pc := range ts.Pending[:min(len(ts.Pending), shown)] {
		parts = append(parts, fmt.Sprintf("%s %s (%d %s)", pc.Name, Age(now.Sub(pc.Added)), len(pc.Missing), plural(len(pc.Missing), "server")))
	}
	if len(ts.Pending) > shown {
		parts = append(parts, fmt.Sprintf("+%d more", len(ts.Pending)-shown))
	}
	return strings.Join(parts, ", ")
}

// conflictsCell is the conflicting values per 100 rows the batchers
// published.
func conflictsCell(ts TableSchema) string {
	if ts.Conflicts == nil || ts.Rows == nil {
		return "-"
	}
	if *ts.Rows == 0 {
		return fmt.Sprintf("%s values in 0 rows", Count(*ts.Conflicts))
	}
	return fmt.Sprintf("%.1f per 100 rows (%s values in %s rows)", 100*float64(*ts.Conflicts)/float64(*ts.Rows), Count(*ts.Conflicts), Count(*ts.Rows))
}

// JSON writes r as one indented JSON object.
func JSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Summary names every problem on one line, for an exit message.
func Summary(problems []Problem) string {
	parts := make([]string, len(problems))
	for i, p := range problems {
		parts[i] = p.String()
	}
	return strings.Join(parts, "; ")
}

// ShardsWith lists, ascending, the shards with a problem of kind.
func ShardsWith(problems []Problem, kind string) []int {
	var out []int
	for _, p := range problems {
		if p.Kind == kind && p.Shard >= 0 && !slices.Contains(out, p.Shard) {
			out = append(out, p.Shard)
		}
	}
	slices.Sort(out)
	return out
}

func backlogLine(b Backlog, now time.Time, stream string) string {
	s := fmt.Sprintf("%s waiting in %s", Count(b.Pending), stream)
	if b.Oldest != nil && b.Pending > 0 {
		s += ", oldest " + Age(now.Sub(*b.Oldest))
	}
	return s
}

func pending(b Backlog) string {
	if b.Consumer == "" {
		return "-"
	}
	return Count(b.Pending)
}

func oldest(b Backlog, now time.Time) string {
	if b.Pending == 0 || b.Oldest == nil {
		return "-"
	}
	return Age(now.Sub(*b.Oldest))
}

func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	return Age(now.Sub(*t)) + " ago"
}

func dash(s string) string {
	if s == "" {
		return "NONE"
	}
	return s
}

func optUint(v *uint64) string {
	if v == nil {
		return "?"
	}
	return Count(*v)
}

func optRate(v *float64) string {
	if v == nil {
		return "-"
	}
	return Count(uint64(*v + 0.5))
}

// Count prints n with thousands separators: 1,234,567.
func Count(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
