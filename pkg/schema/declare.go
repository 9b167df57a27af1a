package schema

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// Declare returns doc with the columns cfg declares, typed for server s
// (the oldest server of the cluster: its types are the ones every server
// can hold), and whether it changed doc, which it never modifies. A
// declared path the schema already has as another column, or whose name
// another path holds, is left as it is and reported in skipped: changing
// a column's type is an operator's ALTER, never automatic.
func Declare(doc *Doc, cfg Config, s Server, now time.Time) (next *Doc, changed bool, skipped []string) {
	if doc == nil {
		doc = &Doc{Format: Format}
	}
	byPath := doc.Index()
	next = doc
	for _, p := range slices.Sorted(maps.Keys(cfg.Columns)) {
		d := cfg.Columns[p]
		kind, err := DeclaredKind(d.Type)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		name := d.Name
		if name == "" {
			name = ColumnName(splitPointer(p))
		}
		chType := ColumnType(kind, d.Type, s)
		if have, ok := byPath[p]; ok {
			c := doc.Columns[have]
			if have != name || c.Type != kind.String() || c.CHType != chType {
				skipped = append(skipped, fmt.Sprintf("%s: the schema has it as %s %s %s; declared %s %s", p, have, c.Type, c.CHType, name, chType))
			}
			continue
		}
		if c, ok := next.Columns[name]; ok {
			skipped = append(skipped, fmt.Sprintf("%s: column %s holds %s", p, name, c.Path))
			continue
		}
		if !changed {
			next, changed = doc.Clone(), true
		}
		next.Columns[name] = &Col{Path: p, Type: kind.String(), CHType: chType, Origin: DeclaredOrigin, Added: now}
	}
	return next, changed, skipped
}

// Adopt returns doc with column name taken over as an operator set it in
// ClickHouse (chType, as system.columns writes it), and whether it changed
// doc. A type Surge cannot fill marks the column failed, so batchers stop
// filling it and its values stay in properties.
func Adopt(doc *Doc, name, chType string, now time.Time) (*Doc, bool) {
	c, ok := doc.Columns[name]
	if !ok || c.CHType == chType {
		return doc, false
	}
	next := doc.Clone()
	kind, err := DeclaredKind(chType)
	if err != nil {
		if next.Failed == nil {
			next.Failed = make(map[string]string)
		}
		if next.Failed[name] != "" {
			return doc, false
		}
		next.Failed[name] = fmt.Sprintf("its type in ClickHouse is %s: %v", chType, err)
		return next, true
	}
	nc := next.Columns[name]
	nc.Type, nc.CHType, nc.Origin = kind.String(), chType, Adopted
	return next, true
}
