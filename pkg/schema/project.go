package schema

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/surge-events/surge/pkg/batch"
)

// Projector projects batches' properties into typed columns under one
// configuration: Parse a batch, Plan the columns it adds to the agreed
// schema, then Project it onto the schema that was agreed. It holds no
// state between batches and is safe for concurrent use.
type Projector struct {
	cfg    Config
	deny   []*regexp.Regexp
	ignore map[string]bool
	// declared are the declared columns' names by path, and reserved the
	// names: inference leaves both to the declared columns, even before the
	// sink has written them into the schema.
	declared map[string]string
	reserved map[string]bool
	// flatteners are reused (each with its buffers and map) by Parse.
	flatteners sync.Pool
	// lastKeys is how many distinct paths the last batch parsed had: the
	// next batch's paths are sized by it, as batches of one stream look
	// alike. Kept here, not in a flattener: the pool drops those at a
	// garbage collection, and a key explosion collects often.
	lastKeys atomic.Int64
	// fields are Parsed's field buffers, back from Release: a batch's
	// fields are about 1 KB an event, garbage once it is projected.
	fields sync.Pool
	paths  pathCache
}

// NewProjector checks cfg and builds a Projector for it.
func NewProjector(cfg Config) (*Projector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Projector{cfg: cfg, ignore: make(map[string]bool), declared: make(map[string]string), reserved: make(map[string]bool)}
	for _, d := range cfg.DenyKeys {
		p.deny = append(p.deny, regexp.MustCompile(d)) // Validate compiled it
	}
	for _, path := range cfg.Ignore {
		p.ignore[path] = true
	}
	for path, d := range cfg.Columns {
		name := d.Name
		if name == "" {
			name = ColumnName(splitPointer(path))
		}
		p.declared[path], p.reserved[name] = name, true
	}
	return p, nil
}

// deniedSegment reports whether a key matches a deny pattern: keys that
// are ids or addresses would add a column each.
func (p *Projector) deniedSegment(seg string) bool {
	for _, re := range p.deny {
		if re.MatchString(seg) {
			return true
		}
	}
	return false
}

// Parse flattens the properties of every row of b once, for Plan and
// Project. A row whose properties are not a JSON object has no fields
// (ingest lets only objects in). Nothing is parsed when the mode is off.
func (p *Projector) Parse(b *batch.Batch) *Parsed {
	out := &Parsed{batch: b}
	if p.cfg.Mode == Off {
		return out
	}
	members := 0
	for _, props := range b.Properties {
		// A member per colon, give or take colons in strings: sizing the
		// fields once spares copying them while they grow.
		members += strings.Count(props, ":")
	}
	out.rowEnd = make([]int, 0, len(b.Properties))
	out.fields = p.fieldBuf(members)
	f := p.getFlattener(out)
	defer p.putFlattener(f)
	// Each member's path is a key at most.
	out.keys = make([]key, 0, min(int(p.lastKeys.Load()), members))
	for row, props := range b.Properties {
		f.addRow(row, props)
	}
	f.finish()
	return out
}

// fieldBuf is an empty field buffer with room for n fields, from Release
// when one is large enough.
func (p *Projector) fieldBuf(n int) []field {
	if buf, ok := p.fields.Get().(*[]field); ok && cap(*buf) >= n {
		return (*buf)[:0]
	}
	return make([]field, 0, n)
}

// Release hands the memory of parsed back for the next batch's Parse:
// parsed must not be used after it. Calling it is optional (the garbage
// collector takes what is not released); the batcher calls it once a
// batch is projected. What Project wrote into the batch stays valid.
func (p *Projector) Release(parsed *Parsed) {
	if parsed == nil || cap(parsed.fields) == 0 {
		return
	}
	buf := parsed.fields[:0]
	parsed.fields, parsed.rowEnd = nil, nil
	p.fields.Put(&buf)
}

// Plan is doc with the columns the parsed batch adds, and whether it adds
// any; doc (nil is empty) is never changed. Only inference adds columns:
// declared ones are written by the sink. Candidates are the batch's typed
// paths that doc lacks and no limit, deny pattern or ignore list keeps
// out, taken by how many rows have them, then by name, while the table,
// the introducing tenant and the hour have room. Each gets the join of
// the batch's kinds for it.
func (p *Projector) Plan(parsed *Parsed, doc *Doc, now time.Time) (*Doc, bool) {
	if p.cfg.Mode != Infer || !p.hasRoom(doc, now) {
		return doc, false
	}
	cands := p.candidates(parsed, doc)
	if len(cands) == 0 {
		return doc, false
	}
	next := &Doc{Format: Format}
	if doc != nil {
		next = doc.Clone()
	}
	if next.Columns == nil {
		next.Columns = make(map[string]*Col)
	}
	if added := p.admit(next, cands, now.UTC()); added == 0 {
		return doc, false
	}
	return next, true
}

// hasRoom reports whether doc may take a column at now: a full table or
// hour spares looking at the batch's paths (a key explosion fills both).
func (p *Projector) hasRoom(doc *Doc, now time.Time) bool {
	if doc == nil {
		return p.cfg.MaxColumns > 0 && p.cfg.MaxNewColumnsPerHour > 0
	}
	rate := doc.Rate
	if windowOver(rate, now) {
		rate = Rate{}
	}
	return len(doc.Columns) < p.cfg.MaxColumns && rate.Added < p.cfg.MaxNewColumnsPerHour
}

// windowOver reports whether rate's hour is over at now.
func windowOver(rate Rate, now time.Time) bool {
	return rate.WindowStart.IsZero() || !now.Before(rate.WindowStart.Add(time.Hour))
}

// candidate is a path Plan may add as a column.
type candidate struct {
	key    *key
	tenant string
}

// candidates are the paths of parsed that may become columns of doc, in
// the order they are admitted.
func (p *Projector) candidates(parsed *Parsed, doc *Doc) []candidate {
	byPath, names := columnIndex(doc)
	var out []candidate
	for i := range parsed.keys {
		k := &parsed.keys[i]
		_, inDoc := byPath[k.pointer]
		if k.rows == 0 || k.denied || k.ignored || inDoc || p.declared[k.pointer] != "" || p.reserved[k.name] ||
			hasName(names, k.name) || hasFailed(doc, k.name) {
			continue
		}
		out = append(out, candidate{key: k, tenant: parsed.tenant(k.firstRow)})
	}
	slices.SortFunc(out, func(a, b candidate) int {
		return cmp.Or(cmp.Compare(b.key.rows, a.key.rows), cmp.Compare(a.key.name, b.key.name),
			cmp.Compare(a.key.pointer, b.key.pointer))
	})
	return out
}

// admit adds candidates to doc while the limits allow, and counts them.
// Of two paths with one name, the first admitted owns it.
func (p *Projector) admit(doc *Doc, cands []candidate, now time.Time) int {
	if windowOver(doc.Rate, now) {
		doc.Rate = Rate{WindowStart: now}
	}
	perTenant := tenantColumns(doc)
	added := 0
	for _, c := range cands {
		if len(doc.Columns) >= p.cfg.MaxColumns || doc.Rate.Added >= p.cfg.MaxNewColumnsPerHour {
			break
		}
		if perTenant[c.tenant] >= p.cfg.MaxColumnsPerTenant || doc.Columns[c.key.name] != nil {
			continue
		}
		// The tenant is a batch's, cut from a whole decoded message
		// (event.Decode): a copy, so the schema does not keep the message.
		doc.Columns[c.key.name] = &Col{Path: c.key.pointer, Type: c.key.kind.String(), Origin: Inferred, Tenant: strings.Clone(c.tenant), Added: now}
		perTenant[c.tenant]++
		doc.Rate.Added++
		added++
	}
	return added
}

// tenantColumns counts doc's columns by the tenant that introduced them.
func tenantColumns(doc *Doc) map[string]int {
	out := make(map[string]int)
	if doc == nil {
		return out
	}
	for _, c := range doc.Columns {
		if c.Tenant != "" {
			out[c.Tenant]++
		}
	}
	return out
}

// The reasons a value is in _conflicts or a path in _unpromoted: the
// reason label of the conflict and unpromoted counters.
const (
	// ReasonType: the value does not convert to its column's type without
	// loss.
	ReasonType = "type"
	// ReasonCollision: another path owns the column of the path's name.
	ReasonCollision = "collision"

	ReasonDeny     = "deny"     // a segment matches a deny pattern
	ReasonKeys     = "keys"     // beyond the event's first MaxKeysPerEvent keys
	ReasonDeclared = "declared" // the mode is declared and the path is not
	// ReasonTableLimit: the table has MaxColumns columns.
	ReasonTableLimit = "table_limit"
	// ReasonTenantLimit: the row's tenant introduced MaxColumnsPerTenant.
	ReasonTenantLimit = "tenant_limit"
	// ReasonRate: MaxNewColumnsPerHour were added in the schema's hour.
	ReasonRate = "rate"
	// ReasonFailed: the path's column failed for good in ClickHouse.
	ReasonFailed = "failed"
	// ReasonPending: the column is not agreed yet (a batch built before
	// it was, or a declared column the sink has not written yet).
	ReasonPending = "pending"
)

// Stats counts a projection's conflicting values and unpromoted paths by
// reason, for the metrics. A nil map counts none.
type Stats struct {
	Conflicts  map[string]int
	Unpromoted map[string]int
	// Paths counts, per tenant, reason and path, what a tenant's events
	// ran into: every conflicting value, and the paths left unpromoted by
	// a limit (keys, tenant_limit, table_limit, rate). Paths that wait for
	// their column (pending), are denied, declared out or failed are the
	// schema's doing, not the tenant's, and not counted here. Each key is
	// listed once: a key explosion brings thousands a batch, and a map of
	// them cost a tenth of its projection.
	Paths []PathCount
}

// PathKey is one tenant's problem with one property path.
type PathKey struct {
	Tenant string
	// Conflict says a value conflicted with a column (Reason ReasonType
	// or ReasonCollision); else the path was unpromoted for Reason.
	Conflict bool
	Reason   string
	// Path is the property's JSON Pointer ("/plan").
	Path string
}

// PathCount is how many values of a PathKey a batch had, and the row of
// the first, for a sample.
type PathCount struct {
	Key    PathKey
	N, Row int
}

// tenantLimit reports whether an unpromoted reason is a limit a tenant's
// events reached.
func tenantLimit(reason string) bool {
	switch reason {
	case ReasonKeys, ReasonTenantLimit, ReasonTableLimit, ReasonRate:
		return true
	}
	return false
}

// reasonCounts counts values by reason, for Stats' maps: a handful of
// reasons a batch, looked up in order, where a map would hash the reason
// of every one of a key explosion's values.
type reasonCounts []reasonCount

type reasonCount struct {
	reason string
	n      int
}

func (rc *reasonCounts) add(reason string) {
	for i := range *rc {
		if (*rc)[i].reason == reason {
			(*rc)[i].n++
			return
		}
	}
	*rc = append(*rc, reasonCount{reason, 1})
}

// byReason is the counts as a map; nil for none.
func (rc reasonCounts) byReason() map[string]int {
	if len(rc) == 0 {
		return nil
	}
	out := make(map[string]int, len(rc))
	for _, c := range rc {
		out[c.reason] = c.n
	}
	return out
}

// Project fills b's typed columns, _conflicts and _unpromoted from parsed
// (Parse(b)) and doc, the agreed schema (nil is empty). A field whose path
// is a column goes into it when it converts without loss, else into
// _conflicts; a field whose name another path's column holds goes into
// _conflicts; other paths are listed in _unpromoted with the reason. The
// same batch and doc always give the same projection. With the mode off, b
// is left unprojected.
func (p *Projector) Project(parsed *Parsed, doc *Doc, b *batch.Batch) Stats {
	if p.cfg.Mode == Off {
		return Stats{}
	}
	if parsed.batch != b {
		panic(fmt.Sprintf("schema: Project of batch %s with another batch's Parse", b.ID()))
	}
	pr := p.newProjection(parsed, doc)
	for row := range parsed.rows() {
		pr.addRow(row)
	}
	pr.finish(b)
	pr.flushPaths()
	pr.stats.Conflicts, pr.stats.Unpromoted = pr.conflictsBy.byReason(), pr.unpromotedBy.byReason()
	return pr.stats
}

// countPath counts k, the path of id, in row (see Stats.Paths): the
// path's first tenant and reason in its slot of pathCounts, any other at
// once.
func (pr *projection) countPath(id int32, k PathKey, row int) {
	if pr.pathCounts == nil {
		pr.pathCounts = make([]PathCount, len(pr.parsed.keys))
	}
	switch c := &pr.pathCounts[id]; {
	case c.N == 0:
		*c = PathCount{Key: k, N: 1, Row: row}
	case c.Key == k:
		c.N++
	default: // the path's second tenant or reason: rare
		if i, ok := pr.otherPaths[k]; ok {
			pr.stats.Paths[i].N++
			return
		}
		if pr.otherPaths == nil {
			pr.otherPaths = make(map[PathKey]int)
		}
		pr.otherPaths[k] = len(pr.stats.Paths)
		pr.stats.Paths = append(pr.stats.Paths, PathCount{Key: k, N: 1, Row: row})
	}
}

// flushPaths puts pathCounts into Stats.Paths, in the order of the
// paths, keeping pathCounts' memory. No key is in both: pathCounts holds
// each path's first tenant and reason, Stats.Paths so far only the
// others.
func (pr *projection) flushPaths() {
	counted := pr.pathCounts[:0]
	for _, c := range pr.pathCounts {
		if c.N > 0 {
			counted = append(counted, c)
		}
	}
	pr.stats.Paths = append(counted, pr.stats.Paths...)
	pr.pathCounts, pr.otherPaths = nil, nil
}

// route is where a path's values go, decided once per batch.
type route struct {
	col int // the index of its column in projection.cols; -1 for none
	// reason is why it has no column when it is known without the row:
	// collision, deny, failed, declared, pending; "" when the limits and
	// the row decide.
	reason string
}

// projection is the state of one Project.
type projection struct {
	p      *Projector
	parsed *Parsed
	doc    *Doc
	routes []route
	cols   []column
	// perTenant counts doc's columns by tenant, for tenant_limit.
	perTenant map[string]int

	// conflicts holds every row's _conflicts JSON, and conflictEnd where
	// each row's ends; rowConflicts is the current row's, to sort.
	conflicts    []byte
	conflictEnd  []int
	rowConflicts []field
	// unpromoted holds every row's paths, and unpromotedEnd where each
	// row's end.
	unpromoted    []string
	unpromotedEnd []int
	// conflictsBy and unpromotedBy count the values of each reason, for
	// stats.
	conflictsBy, unpromotedBy reasonCounts
	stats                     Stats
	// pathCounts counts Stats.Paths by the batch's path id first: a path
	// of a batch mostly has one tenant and one reason, and hashing three
	// strings for every unpromoted field took a fifth of a key
	// explosion's projection. flushPaths moves them into Stats.Paths.
	pathCounts []PathCount
	// otherPaths indexes, in stats.Paths, the counts of a path's other
	// tenants and reasons, which go there at once.
	otherPaths map[PathKey]int
}

func (p *Projector) newProjection(parsed *Parsed, doc *Doc) *projection {
	if doc == nil {
		doc = &Doc{}
	}
	pr := &projection{p: p, parsed: parsed, doc: doc, perTenant: tenantColumns(doc)}
	byPath, names := columnIndex(doc)
	pr.routes = make([]route, len(parsed.keys))
	unpromoted := 0 // about how many values go to _unpromoted
	for i := range parsed.keys {
		r := pr.route(&parsed.keys[i], byPath, names)
		pr.routes[i] = r
		if r.col < 0 && r.reason != ReasonCollision {
			unpromoted += parsed.keys[i].rows
		}
	}
	// A key explosion lists about ten paths an event: growing the list
	// as it goes was a third of what its projection allocated.
	pr.unpromoted = make([]string, 0, unpromoted)
	return pr
}

// columnIndex maps doc's columns (doc may be nil) by path and by name (to
// their path). Of two columns of one path (which the schema never holds),
// the one of the lower name counts, so every instance picks the same.
func columnIndex(doc *Doc) (byPath map[string]string, names map[string]string) {
	if doc == nil {
		return nil, nil
	}
	byPath = make(map[string]string, len(doc.Columns))
	names = make(map[string]string, len(doc.Columns))
	for name, c := range doc.Columns {
		names[name] = c.Path
		if cur, ok := byPath[c.Path]; !ok || name < cur {
			byPath[c.Path] = name
		}
	}
	return byPath, names
}

// route decides where k's values go.
func (pr *projection) route(k *key, byPath, names map[string]string) route {
	if !k.hasField {
		return route{col: -1}
	}
	if name, ok := byPath[k.pointer]; ok {
		c := pr.doc.Columns[name]
		if hasFailed(pr.doc, name) || !c.Kind().Valid() {
			return route{col: -1, reason: ReasonFailed}
		}
		pr.cols = append(pr.cols, newColumn(name, c, pr.parsed.rows()))
		return route{col: len(pr.cols) - 1}
	}
	switch {
	case hasFailed(pr.doc, k.name):
		return route{col: -1, reason: ReasonFailed}
	case hasName(names, k.name):
		return route{col: -1, reason: ReasonCollision}
	case k.denied:
		return route{col: -1, reason: ReasonDeny}
	case pr.p.cfg.Mode == Declared:
		return route{col: -1, reason: ReasonDeclared}
	case pr.p.declared[k.pointer] != "":
		return route{col: -1, reason: ReasonPending}
	}
	return route{col: -1}
}

func hasName(names map[string]string, name string) bool {
	_, ok := names[name]
	return ok
}

// hasFailed reports whether the column name failed for good in
// ClickHouse: it is never proposed again, even when no longer a column.
func hasFailed(doc *Doc, name string) bool {
	if doc == nil {
		return false
	}
	_, ok := doc.Failed[name]
	return ok
}

// addRow projects one row.
func (pr *projection) addRow(row int) {
	pr.rowConflicts = pr.rowConflicts[:0]
	rowStart := len(pr.unpromoted)
	tenant := pr.parsed.tenant(row)
	limit := "" // the row's limitReason, once a field needs it
	for i, f := range pr.parsed.rowFields(row) {
		r := pr.routes[f.key]
		switch {
		case r.col >= 0:
			if !pr.cols[r.col].add(pr.parsed, row, f.v) {
				pr.conflict(row, tenant, f, ReasonType)
			}
		case f.v.infer == 0: // null or [] at a path with no column: nothing to keep
		case r.reason == ReasonCollision:
			pr.conflict(row, tenant, f, ReasonCollision)
		default:
			reason := r.reason
			switch {
			case reason == ReasonDeny || reason == ReasonFailed:
			case i >= pr.p.cfg.MaxKeysPerEvent:
				reason = ReasonKeys
			case reason == "":
				if limit == "" {
					limit = pr.limitReason(tenant)
				}
				reason = limit
			}
			pointer := pr.parsed.keys[f.key].pointer
			pr.unpromoted = append(pr.unpromoted, pointer)
			pr.unpromotedBy.add(reason)
			if tenantLimit(reason) {
				pr.countPath(f.key, PathKey{Tenant: tenant, Reason: reason, Path: pointer}, row)
			}
		}
	}
	slices.Sort(pr.unpromoted[rowStart:])
	pr.unpromotedEnd = append(pr.unpromotedEnd, len(pr.unpromoted))
	pr.writeConflicts(row)
}

// limitReason is why a path of a row of tenant that the schema says
// nothing of has no column: the limit it reached, else pending.
func (pr *projection) limitReason(tenant string) string {
	switch {
	case len(pr.doc.Columns) >= pr.p.cfg.MaxColumns:
		return ReasonTableLimit
	case pr.perTenant[tenant] >= pr.p.cfg.MaxColumnsPerTenant:
		return ReasonTenantLimit
	case pr.doc.Rate.Added >= pr.p.cfg.MaxNewColumnsPerHour:
		return ReasonRate
	}
	return ReasonPending
}

func (pr *projection) conflict(row int, tenant string, f field, reason string) {
	pr.rowConflicts = append(pr.rowConflicts, f)
	pr.conflictsBy.add(reason)
	pr.countPath(f.key, PathKey{Tenant: tenant, Conflict: true, Reason: reason, Path: pr.parsed.keys[f.key].pointer}, row)
}

// writeConflicts appends the row's _conflicts: a JSON object of the
// values by pointer, keys sorted so the bytes are the same every time.
func (pr *projection) writeConflicts(row int) {
	if len(pr.rowConflicts) > 0 {
		keys := pr.parsed.keys
		slices.SortFunc(pr.rowConflicts, func(a, b field) int {
			return cmp.Compare(keys[a.key].pointer, keys[b.key].pointer)
		})
		pr.conflicts = append(pr.conflicts, '{')
		for i, f := range pr.rowConflicts {
			if i > 0 {
				pr.conflicts = append(pr.conflicts, ',')
			}
			pr.conflicts = AppendJSONString(pr.conflicts, keys[f.key].pointer)
			pr.conflicts = append(pr.conflicts, ':')
			pr.conflicts = pr.parsed.appendValueJSON(pr.conflicts, row, f.v)
		}
		pr.conflicts = append(pr.conflicts, '}')
	}
	pr.conflictEnd = append(pr.conflictEnd, len(pr.conflicts))
}

// finish writes the projection into b.
func (pr *projection) finish(b *batch.Batch) {
	rows := pr.parsed.rows()
	conflicts := string(pr.conflicts)
	b.Conflicts = make([]string, rows)
	b.Unpromoted = make([][]string, rows)
	cStart, uStart := 0, 0
	for r := range rows {
		b.Conflicts[r] = conflicts[cStart:pr.conflictEnd[r]]
		if end := pr.unpromotedEnd[r]; end > uStart {
			b.Unpromoted[r] = pr.unpromoted[uStart:end:end]
		}
		cStart, uStart = pr.conflictEnd[r], pr.unpromotedEnd[r]
	}
	b.Typed = nil
	for i := range pr.cols {
		c := &pr.cols[i]
		if c.filled {
			c.padTo(rows)
			b.Typed = append(b.Typed, c.col)
		}
	}
	slices.SortFunc(b.Typed, func(x, y batch.Column) int { return cmp.Compare(x.Name, y.Name) })
}

// column builds one typed column of a batch.
type column struct {
	col    batch.Column
	digits int  // DateTime: the sub-second digits kept
	filled bool // a row holds a value: columns without one are left out
}

// newColumn starts the column name of c, sized for rows.
func newColumn(name string, c *Col, rows int) column {
	out := column{col: batch.Column{Name: name, Kind: c.Kind()}, digits: timeDigits(c.CHType)}
	if out.col.Kind.IsArray() {
		out.col.Lens = make([]uint32, 0, rows)
		return out
	}
	out.col.Null = make([]bool, 0, rows)
	switch out.col.Kind.Elem() {
	case batch.Float64:
		out.col.Floats = make([]float64, 0, rows)
	case batch.String:
		out.col.Strs = make([]string, 0, rows)
	default:
		out.col.Ints = make([]int64, 0, rows)
	}
	return out
}

// padTo fills the rows before row with NULLs.
func (c *column) padTo(row int) { c.col.AppendNulls(row - c.col.Rows()) }

// add puts row's value v into the column, or a NULL (an empty array) and
// false when v does not convert without loss. null and [] are NULL.
func (c *column) add(ps *Parsed, row int, v value) bool {
	c.padTo(row)
	if v.kind == vNull || (v.kind == vArray && v.elemSpan().n == 0) {
		c.col.AppendNull()
		return true
	}
	if c.col.Kind.IsArray() {
		return c.addArray(ps, row, v)
	}
	if !c.appendScalar(ps, row, v) {
		c.col.AppendNull()
		return false
	}
	c.col.Null = append(c.col.Null, false)
	c.filled = true
	return true
}

// addArray appends an array converting every element, or an empty array
// and false when one does not convert.
func (c *column) addArray(ps *Parsed, row int, v value) bool {
	if v.kind != vArray {
		c.col.AppendNull()
		return false
	}
	marks := [...]int{len(c.col.ElemNull), len(c.col.Ints), len(c.col.Floats), len(c.col.Strs)}
	for _, e := range ps.elemsOf(v) {
		if e.kind == vNull {
			c.col.ElemNull = append(c.col.ElemNull, true)
			c.appendZero()
			continue
		}
		if !c.appendScalar(ps, row, e) {
			c.col.ElemNull = c.col.ElemNull[:marks[0]]
			c.col.Ints, c.col.Floats, c.col.Strs = c.col.Ints[:marks[1]], c.col.Floats[:marks[2]], c.col.Strs[:marks[3]]
			c.col.AppendNull()
			return false
		}
		c.col.ElemNull = append(c.col.ElemNull, false)
	}
	c.col.Lens = append(c.col.Lens, v.elemSpan().n)
	c.filled = true
	return true
}

// appendScalar appends v converted to the column's scalar kind to the
// values, and reports false, appending nothing, when it does not convert.
func (c *column) appendScalar(ps *Parsed, row int, v value) bool {
	switch c.col.Kind.Elem() {
	case batch.String:
		c.col.Strs = append(c.col.Strs, ps.asString(row, v))
		return true
	case batch.Float64:
		f, ok := ps.asFloat(row, v)
		if ok {
			c.col.Floats = append(c.col.Floats, f)
		}
		return ok
	}
	var i int64
	var ok bool
	switch c.col.Kind.Elem() {
	case batch.Int64:
		i, ok = ps.asInt(row, v)
	case batch.Bool:
		i, ok = asBool(v)
	case batch.DateTime:
		i, ok = ps.asTime(row, v, c.digits)
	}
	if ok {
		c.col.Ints = append(c.col.Ints, i)
	}
	return ok
}

// appendZero appends the zero value of a NULL element.
func (c *column) appendZero() {
	switch c.col.Kind.Elem() {
	case batch.Float64:
		c.col.Floats = append(c.col.Floats, 0)
	case batch.String:
		c.col.Strs = append(c.col.Strs, "")
	default:
		c.col.Ints = append(c.col.Ints, 0)
	}
}
