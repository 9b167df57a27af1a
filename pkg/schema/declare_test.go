package schema_test

import (
	"testing"
	"time"

	"github.com/surge-events/surge/pkg/schema"
)

var (
	old     = schema.Server{Major: 18, Minor: 16}
	current = schema.Server{Major: 25, Minor: 3}
	now     = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
)

func declared() schema.Config {
	cfg := schema.DefaultConfig()
	cfg.Mode = schema.Declared
	cfg.Columns = map[string]schema.DeclaredColumn{
		"/plan":        {Type: "LowCardinality(String)"},
		"/created_at":  {Type: "DateTime64(3, 'UTC')"},
		"/order/total": {Type: "Float64", Name: "p_total"},
	}
	return cfg
}

// Declared columns are typed for the server: what 18.16 lacks falls back
// to what it has.
func TestDeclareTypesForTheServer(t *testing.T) {
	for _, tc := range []struct {
		server schema.Server
		want   map[string]string // name -> type, ch_type
	}{
		{old, map[string]string{
			"p_plan": "string Nullable(String)", "p_created_at": "datetime Nullable(DateTime('UTC'))", "p_total": "float64 Nullable(Float64)",
		}},
		{current, map[string]string{
			"p_plan": "string LowCardinality(Nullable(String))", "p_created_at": "datetime Nullable(DateTime64(3, 'UTC'))", "p_total": "float64 Nullable(Float64)",
		}},
	} {
		doc, changed, skipped := schema.Declare(nil, declared(), tc.server, now)
		if !changed || len(skipped) != 0 || len(doc.Columns) != len(tc.want) {
			t.Fatalf("%s: changed %v, skipped %q, columns %v", tc.server, changed, skipped, doc.Columns)
		}
		for name, want := range tc.want {
			c := doc.Columns[name]
			if c == nil || c.Type+" "+c.CHType != want || c.Origin != schema.DeclaredOrigin || !c.Added.Equal(now) {
				t.Errorf("%s: %s = %+v, want %s declared", tc.server, name, c, want)
			}
		}
		if doc.Columns["p_total"].Path != "/order/total" {
			t.Errorf("p_total path %q", doc.Columns["p_total"].Path)
		}
		// Declaring again changes nothing.
		if _, again, skipped := schema.Declare(doc, declared(), tc.server, now.Add(time.Hour)); again || len(skipped) != 0 {
			t.Errorf("%s: declared twice: changed %v, skipped %q", tc.server, again, skipped)
		}
	}
}

// A declared path the schema already holds otherwise, or whose name
// another path holds, is left alone and reported.
func TestDeclareLeavesExistingColumns(t *testing.T) {
	doc := &schema.Doc{Format: schema.Format, Columns: map[string]*schema.Col{
		"p_plan":  {Path: "/plan", Type: "int64", Origin: schema.Inferred},
		"p_total": {Path: "/total", Type: "float64", Origin: schema.Inferred},
	}}
	next, changed, skipped := schema.Declare(doc, declared(), old, now)
	if !changed || len(skipped) != 2 {
		t.Fatalf("changed %v, skipped %q; want p_created_at added, 2 skipped", changed, skipped)
	}
	if next.Columns["p_plan"].Type != "int64" || next.Columns["p_total"].Path != "/total" || next.Columns["p_created_at"] == nil {
		t.Errorf("columns %v", next.Columns)
	}
	if doc.Columns["p_created_at"] != nil {
		t.Error("Declare changed its input")
	}
}

// An operator's type is adopted when Surge fills it, else the column is
// marked failed.
func TestAdopt(t *testing.T) {
	doc := &schema.Doc{Format: schema.Format, Columns: map[string]*schema.Col{
		"p_n":  {Path: "/n", Type: "int64", Origin: schema.Inferred},
		"p_id": {Path: "/id", Type: "string", Origin: schema.Inferred},
	}}
	next, changed := schema.Adopt(doc, "p_n", "Nullable(String)", now)
	if c := next.Columns["p_n"]; !changed || c.Type != "string" || c.CHType != "Nullable(String)" || c.Origin != schema.Adopted {
		t.Errorf("adopt String: changed %v, %+v", changed, c)
	}
	if doc.Columns["p_n"].Type != "int64" {
		t.Error("Adopt changed its input")
	}
	if _, again := schema.Adopt(next, "p_n", "Nullable(String)", now); again {
		t.Error("adopted twice")
	}
	next, changed = schema.Adopt(doc, "p_id", "UUID", now)
	if !changed || next.Failed["p_id"] == "" || next.Columns["p_id"].Type != "string" {
		t.Errorf("adopt UUID: changed %v, failed %q", changed, next.Failed)
	}
}
