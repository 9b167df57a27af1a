package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
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

// sampleKeys are the keys of the generated properties fit for the
// queries, the best first: the commonest, then the first by name.
type sampleKeys struct {
	// ints are top-level keys whose every value is an integer.
	ints []string
	// strs are top-level keys whose every value is a string, each with
	// its commonest value; plan = 'pro' (the design's query) first where
	// the events have it, then the keys of fewer distinct values.
	strs []stringKey
	// nested are paths of string leaves under context.page, url first.
	nested [][]string
}

// stringKey is a key and the value a query counts.
type stringKey struct{ key, value string }

// profileKeys lists the queries' candidate keys in one request body of
// events.
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
	// commonest orders names by count, highest first, then by name.
	commonest := func(names []string, count func(string) int) []string {
		slices.SortStableFunc(names, func(a, b string) int { return cmp.Compare(count(b), count(a)) })
		return names
	}
	var out sampleKeys
	var strs []string
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		switch s := keys[k]; {
		case strings.ContainsAny(k, `"\'`): // not worth quoting for visitParam
		case s.ints == s.n:
			out.ints = append(out.ints, k)
		case s.strs == s.n:
			strs = append(strs, k)
		}
	}
	out.ints = commonest(out.ints, func(k string) int { return keys[k].n })
	slices.SortStableFunc(strs, func(a, b string) int {
		return cmp.Or(cmp.Compare(keys[b].n, keys[a].n), cmp.Compare(len(keys[a].values), len(keys[b].values)))
	})
	for _, k := range strs {
		values := keys[k].values
		v := commonest(slices.Sorted(maps.Keys(values)), func(v string) int { return values[v] })[0]
		if k == "plan" && values["pro"] > 0 {
			out.strs = append([]stringKey{{"plan", "pro"}}, out.strs...)
			continue
		}
		out.strs = append(out.strs, stringKey{k, v})
	}
	paths := commonest(slices.Sorted(maps.Keys(leaves)), func(k string) int { return leaves[k] })
	if i := slices.Index(paths, "url"); i > 0 {
		paths = append([]string{"url"}, slices.Delete(paths, i, i+1)...)
	}
	for _, leaf := range paths {
		out.nested = append(out.nested, []string{"context", "page", leaf})
	}
	return out, nil
}

// queryPlans are the design's three queries over table db.events, each
// on the first candidate key whose typed column cols (name: type) holds
// with the type the query needs, or why none can run.
func queryPlans(db string, k sampleKeys, cols map[string]string) []queryTiming {
	table := db + ".events"
	// first is the first of n candidates whose column is of type typ.
	first := func(n int, path func(i int) []string, typ string) (int, string) {
		for i := range n {
			if cols[schema.ColumnName(path(i))] == typ {
				return i, ""
			}
		}
		if n == 0 {
			return -1, ""
		}
		return -1, fmt.Sprintf("no %s column for any of %d keys (%s first)", typ, n, schema.ColumnName(path(0)))
	}
	var out []queryTiming
	skip := func(name, why string) { out = append(out, queryTiming{name: name, skipped: why}) }

	const sum = "sum of an int key"
	if i, why := first(len(k.ints), func(i int) []string { return []string{k.ints[i]} }, "Nullable(Int64)"); i < 0 {
		skip(sum, cmp.Or(why, "no key is always an integer"))
	} else {
		key := k.ints[i]
		out = append(out, queryTiming{name: sum + " (" + key + ")",
			typedSQL: fmt.Sprintf("SELECT sum(%s) FROM %s", schema.ColumnName([]string{key}), table),
			rawSQL:   fmt.Sprintf("SELECT sum(visitParamExtractInt(properties, %s)) FROM %s", quote(key), table)})
	}

	const count = "count of a string value"
	if i, why := first(len(k.strs), func(i int) []string { return []string{k.strs[i].key} }, "Nullable(String)"); i < 0 {
		skip(count, cmp.Or(why, "no key is always a string"))
	} else {
		s := k.strs[i]
		out = append(out, queryTiming{name: count + " (" + s.key + " = " + quote(s.value) + ")",
			typedSQL: fmt.Sprintf("SELECT countIf(%s = %s) FROM %s", schema.ColumnName([]string{s.key}), quote(s.value), table),
			rawSQL:   fmt.Sprintf("SELECT countIf(visitParamExtractString(properties, %s) = %s) FROM %s", quote(s.key), quote(s.value), table)})
	}

	const uniq = "uniq of a nested key per day"
	if i, why := first(len(k.nested), func(i int) []string { return k.nested[i] }, "Nullable(String)"); i < 0 {
		skip(uniq, cmp.Or(why, "no string under context.page"))
	} else {
		path := k.nested[i]
		out = append(out, queryTiming{name: uniq + " (" + strings.Join(path, ".") + ")",
			typedSQL: fmt.Sprintf("SELECT toDate(ts) AS day, uniq(%s) FROM %s GROUP BY day ORDER BY day", schema.ColumnName(path), table),
			// visitParam finds the key at any depth: the first "url" of
			// the text, wherever it is.
			rawSQL: fmt.Sprintf("SELECT toDate(ts) AS day, uniq(visitParamExtractString(properties, %s)) FROM %s GROUP BY day ORDER BY day",
				quote(path[len(path)-1]), table)})
	}
	return out
}

// quote is s as a ClickHouse string literal.
func quote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// queryResults are the queries of an infer run.
type queryResults struct {
	rows uint64 // the rows they read
	// floor is the median of SELECT count() through the same table: what
	// any query costs before it reads a column (the Distributed table's
	// round trip to each server, parsing, the parts), both forms alike.
	floor   time.Duration
	queries []queryTiming
}

// typedQueries runs the queries over db.events, typed and visitParam
// forms in turn, queryRuns times each, after timing the floor.
func typedQueries(ctx context.Context, ch driver.Conn, db string, gen *generator) (queryResults, error) {
	var out queryResults
	keys, err := profileKeys(gen.bodies[0])
	if err != nil {
		return out, err
	}
	var floor []time.Duration
	var count string
	for range queryRuns {
		d, res, err := timeQuery(ctx, ch, "SELECT count() FROM "+db+".events")
		if err != nil {
			return out, fmt.Errorf("count rows: %w", err)
		}
		floor, count = append(floor, d), res
	}
	out.floor = median(floor)
	if out.rows, err = strconv.ParseUint(count, 10, 64); err != nil {
		return out, fmt.Errorf("count rows: %q: %w", count, err)
	}
	cols := map[string]string{}
	rows, err := ch.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = 'events' AND startsWith(name, 'p_')", db)
	if err != nil {
		return out, fmt.Errorf("list typed columns: %w", err)
	}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			rows.Close()
			return out, err
		}
		cols[name] = typ
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return out, err
	}
	qs := queryPlans(db, keys, cols)
	for i := range qs {
		q := &qs[i]
		if q.skipped != "" {
			continue
		}
		var typed, raw []time.Duration
		for range queryRuns {
			d, res, err := timeQuery(ctx, ch, q.typedSQL)
			if err != nil {
				return out, fmt.Errorf("%s: %w", q.typedSQL, err)
			}
			typed, q.typedResult = append(typed, d), res
			if d, res, err = timeQuery(ctx, ch, q.rawSQL); err != nil {
				return out, fmt.Errorf("%s: %w", q.rawSQL, err)
			}
			raw, q.rawResult = append(raw, d), res
		}
		q.typed, q.raw = median(typed), median(raw)
	}
	out.queries = qs
	return out, nil
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
// how many times faster the typed column is, in all and above the floor,
// and the SQL.
func queryReport(r benchReport) string {
	var b strings.Builder
	res := r.queries
	fmt.Fprintf(&b, "\nQueries after the %s run (properties %s; %d rows, through the Distributed table; median of %d runs each)\n",
		r.mode, r.flags.properties, res.rows, queryRuns)
	fmt.Fprintf(&b, "  %-48s %14s %14s %10s %12s\n", "", "typed column", "visitParam", "speed-up", "above floor")
	for _, t := range res.queries {
		if t.skipped != "" {
			fmt.Fprintf(&b, "  %-48s skipped: %s\n", t.name, t.skipped)
			continue
		}
		speedup, above := "-", "-"
		if t.typed > 0 {
			speedup = fmt.Sprintf("%.1fx", float64(t.raw)/float64(t.typed))
		}
		switch {
		case t.typed < res.floor+res.floor/10: // what is left is the runs' noise
			above = "at floor"
		case t.raw > res.floor:
			above = fmt.Sprintf("%.1fx", float64(t.raw-res.floor)/float64(t.typed-res.floor))
		}
		fmt.Fprintf(&b, "  %-48s %14s %14s %10s %12s\n", t.name, fmtMillis(t.typed), fmtMillis(t.raw), speedup, above)
	}
	fmt.Fprintf(&b, "  floor: SELECT count() through the same table took %s. Every query pays it, both forms alike; \"above floor\"\n"+
		"  compares what each form costs beyond it, the part that grows with the rows (\"at floor\": the typed form took\n"+
		"  within a tenth of it, too little beyond it to compare).\n", fmtMillis(res.floor))
	for _, q := range res.queries {
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
