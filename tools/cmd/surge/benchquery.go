package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/schema"
)

// After an infer run, the bench times the typed columns design's three
// queries each way: over the typed column, and over properties with
// 18.16's visitParamExtract* (JSONExtract* arrived in 19.8). The keys
// are read from the generated events, so any profile that has keys of
// the right kinds gets the queries.

// queryRuns is how many times each form of a query runs; the report
// gives the median.
const queryRuns = 5

// queryTiming is one query over the typed column and over properties.
type queryTiming struct {
	name             string
	typedSQL, rawSQL string
	// skipped says why the query did not run; the rest is then empty.
	skipped     string
	typed, raw  time.Duration // medians
	typedResult string
	rawResult   string
}

// sampleKeys are keys of the generated properties fit for the queries,
// "" (nil) when the events have none.
type sampleKeys struct {
	// intKey is a top-level key whose every value is an integer.
	intKey string
	// strKey is a top-level key whose every value is a string: plan when
	// a value is pro (the design's query), else the one with the fewest
	// distinct values; strValue is pro or the key's commonest value.
	strKey, strValue string
	// nested is the path of a string leaf under context.page, url
	// preferred.
	nested []string
}

// profileKeys picks the queries' keys from one request body of events:
// among the keys of each kind, the commonest, then the first by name.
func profileKeys(body []byte) (sampleKeys, error) {
	var events []struct {
		Properties map[string]any `json:"properties"`
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	if err := d.Decode(&events); err != nil {
		return sampleKeys{}, fmt.Errorf("read generated events: %w", err)
	}
	type seen struct {
		n, ints, strs int
		values        map[string]int
	}
	keys := map[string]*seen{}
	leaves := map[string]int{} // string leaves under context.page
	for _, e := range events {
		for k, v := range e.Properties {
			s := keys[k]
			if s == nil {
				s = &seen{values: map[string]int{}}
				keys[k] = s
			}
			s.n++
			switch v := v.(type) {
			case json.Number:
				if !strings.ContainsAny(v.String(), ".eE") {
					s.ints++
				}
			case string:
				s.strs++
				s.values[v]++
			}
		}
		ctx, _ := e.Properties["context"].(map[string]any)
		page, _ := ctx["page"].(map[string]any)
		for k, v := range page {
			if _, ok := v.(string); ok {
				leaves[k]++
			}
		}
	}
	// best is the key ok keeps: the commonest, then the one of fewest
	// distinct values, then the first by name.
	best := func(ok func(k string, s *seen) bool) string {
		var top string
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			s := keys[k]
			if !ok(k, s) || strings.ContainsAny(k, `"\'`) {
				continue
			}
			if t := keys[top]; top == "" || s.n > t.n || (s.n == t.n && len(s.values) < len(t.values)) {
				top = k
			}
		}
		return top
	}
	var out sampleKeys
	out.intKey = best(func(_ string, s *seen) bool { return s.ints == s.n })
	strs := func(_ string, s *seen) bool { return s.strs == s.n }
	// The design's own query, countIf(p_plan = 'pro'), where the events
	// allow it.
	if s := keys["plan"]; s != nil && strs("plan", s) && s.values["pro"] > 0 {
		out.strKey, out.strValue = "plan", "pro"
	} else if out.strKey = best(strs); out.strKey != "" {
		values := keys[out.strKey].values
		out.strValue = slices.MaxFunc(slices.Sorted(maps.Keys(values)), func(a, b string) int {
			// The commonest; of equals, the first by name.
			return cmp.Or(cmp.Compare(values[a], values[b]), strings.Compare(b, a))
		})
	}
	if len(leaves) > 0 {
		leaf := "url"
		if leaves[leaf] == 0 {
			leaf = slices.MaxFunc(slices.Sorted(maps.Keys(leaves)), func(a, b string) int {
				return cmp.Or(cmp.Compare(leaves[a], leaves[b]), strings.Compare(b, a))
			})
		}
		out.nested = []string{"context", "page", leaf}
	}
	return out, nil
}

// queryPlans are the design's three queries over the keys k of table
// db.events, or why one cannot run.
func queryPlans(db string, k sampleKeys) []queryTiming {
	table := db + ".events"
	var out []queryTiming
	// add names the query after its key when there is one.
	add := func(name, key, why, typedSQL, rawSQL string) {
		if key == "" {
			out = append(out, queryTiming{name: name, skipped: why})
			return
		}
		out = append(out, queryTiming{name: name + " (" + key + ")", typedSQL: typedSQL, rawSQL: rawSQL})
	}
	col := func(path ...string) string { return schema.ColumnName(path) }
	add("sum of an int key", k.intKey, "no key is always an integer",
		fmt.Sprintf("SELECT sum(%s) FROM %s", col(k.intKey), table),
		fmt.Sprintf("SELECT sum(visitParamExtractInt(properties, %s)) FROM %s", quote(k.intKey), table))
	var strKey string
	if k.strKey != "" {
		strKey = k.strKey + " = " + quote(k.strValue)
	}
	add("count of a string value", strKey, "no key is always a string",
		fmt.Sprintf("SELECT countIf(%s = %s) FROM %s", col(k.strKey), quote(k.strValue), table),
		fmt.Sprintf("SELECT countIf(visitParamExtractString(properties, %s) = %s) FROM %s", quote(k.strKey), quote(k.strValue), table))
	leaf := ""
	if len(k.nested) > 0 {
		leaf = k.nested[len(k.nested)-1]
	}
	add("uniq of a nested key per day", strings.Join(k.nested, "."), "no string under context.page",
		fmt.Sprintf("SELECT toDate(ts) AS day, uniq(%s) FROM %s GROUP BY day ORDER BY day", col(k.nested...), table),
		// visitParam finds the key at any depth: the first "url" of the
		// text, wherever it is.
		fmt.Sprintf("SELECT toDate(ts) AS day, uniq(visitParamExtractString(properties, %s)) FROM %s GROUP BY day ORDER BY day", quote(leaf), table))
	return out
}

// columnOf is the typed column a planned query reads and the type it
// must have for the query to mean the same as its visitParam form.
func columnOf(q queryTiming, k sampleKeys) (name, typ string) {
	switch {
	case strings.HasPrefix(q.name, "sum"):
		return schema.ColumnName([]string{k.intKey}), "Nullable(Int64)"
	case strings.HasPrefix(q.name, "count"):
		return schema.ColumnName([]string{k.strKey}), "Nullable(String)"
	default:
		return schema.ColumnName(k.nested), "Nullable(String)"
	}
}

// quote is s as a ClickHouse string literal.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// typedQueries runs the queries over db.events, typed and visitParam
// forms in turn, queryRuns times each; n is the rows they read.
func typedQueries(ctx context.Context, ch driver.Conn, db string, gen *generator) (n uint64, _ []queryTiming, _ error) {
	keys, err := profileKeys(gen.bodies[0])
	if err != nil {
		return 0, nil, err
	}
	if err := ch.QueryRow(ctx, "SELECT count() FROM "+db+".events").Scan(&n); err != nil {
		return 0, nil, fmt.Errorf("count rows: %w", err)
	}
	cols := map[string]string{}
	rows, err := ch.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = 'events' AND startsWith(name, 'p_')", db)
	if err != nil {
		return 0, nil, fmt.Errorf("list typed columns: %w", err)
	}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			rows.Close()
			return 0, nil, err
		}
		cols[name] = typ
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, nil, err
	}
	qs := queryPlans(db, keys)
	for i := range qs {
		q := &qs[i]
		if q.skipped != "" {
			continue
		}
		name, want := columnOf(*q, keys)
		if got, ok := cols[name]; !ok || got != want {
			q.skipped = fmt.Sprintf("%s is not a column of type %s", name, want)
			if ok {
				q.skipped = fmt.Sprintf("%s is %s, not %s", name, got, want)
			}
			q.typedSQL, q.rawSQL = "", ""
			continue
		}
		var typed, raw []time.Duration
		for range queryRuns {
			d, res, err := timeQuery(ctx, ch, q.typedSQL)
			if err != nil {
				return 0, nil, fmt.Errorf("%s: %w", q.typedSQL, err)
			}
			typed, q.typedResult = append(typed, d), res
			if d, res, err = timeQuery(ctx, ch, q.rawSQL); err != nil {
				return 0, nil, fmt.Errorf("%s: %w", q.rawSQL, err)
			}
			raw, q.rawResult = append(raw, d), res
		}
		q.typed, q.raw = median(typed), median(raw)
	}
	return n, qs, nil
}

// timeQuery runs one query and reads every row; it returns how long that
// took and the rows as text.
func timeQuery(ctx context.Context, ch driver.Conn, sql string) (time.Duration, string, error) {
	start := time.Now()
	rows, err := ch.Query(ctx, sql)
	if err != nil {
		return 0, "", err
	}
	defer rows.Close()
	var out []string
	types := rows.ColumnTypes()
	for rows.Next() {
		dest := make([]any, len(types))
		for i, t := range types {
			dest[i] = reflect.New(t.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return 0, "", err
		}
		var vals []string
		for _, d := range dest {
			vals = append(vals, valueText(reflect.ValueOf(d)))
		}
		out = append(out, strings.Join(vals, " "))
	}
	if err := rows.Err(); err != nil {
		return 0, "", err
	}
	return time.Since(start), strings.Join(out, "; "), nil
}

// valueText prints what v points to, through pointers (Nullable); NULL
// for a nil one.
func valueText(v reflect.Value) string {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "NULL"
		}
		v = v.Elem()
	}
	if t, ok := v.Interface().(time.Time); ok {
		return t.Format(time.DateOnly)
	}
	return fmt.Sprint(v.Interface())
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// queryReport prints the infer run's query times: each form's median,
// how many times faster the typed column is, and the SQL.
func queryReport(r benchReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nQueries after the %s run (properties %s; %d rows, through the Distributed table; median of %d runs each)\n",
		r.mode, r.flags.properties, r.queryRows, queryRuns)
	fmt.Fprintf(&b, "  %-48s %14s %14s %10s\n", "", "typed column", "visitParam", "speed-up")
	for _, q := range r.queries {
		if q.skipped != "" {
			fmt.Fprintf(&b, "  %-48s skipped: %s\n", q.name, q.skipped)
			continue
		}
		speedup := "-"
		if q.typed > 0 {
			speedup = fmt.Sprintf("%.1fx", float64(q.raw)/float64(q.typed))
		}
		fmt.Fprintf(&b, "  %-48s %14s %14s %10s\n", q.name, fmtMillis(q.typed), fmtMillis(q.raw), speedup)
	}
	for _, q := range r.queries {
		if q.skipped != "" {
			continue
		}
		fmt.Fprintf(&b, "  %s\n    %s\n      -> %s\n    %s\n      -> %s\n", q.name, q.typedSQL, q.typedResult, q.rawSQL, q.rawResult)
		if q.typedResult != q.rawResult {
			fmt.Fprintf(&b, "    the results differ: visitParam reads 0 or '' where the key is missing (uniq counts '', the typed column is NULL),\n"+
				"    the first match of the key at any depth, and a value the typed column holds as NULL with a conflict\n")
		}
	}
	return trimLines(b.String())
}
