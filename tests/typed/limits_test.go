package typed

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/surge-events/surge/pkg/schema"
)

// TestKeyExplosion is the design's case 11: 10,000 distinct keys in one
// request stop at the hour's column limit, in one ALTER per table and
// server, and the rest is listed in _unpromoted; ids used as keys are
// never promoted.
func TestKeyExplosion(t *testing.T) {
	h := start(t, 4, schema.DefaultConfig())
	evs := make([]string, 1000)
	for i := range evs {
		keys := make([]string, 10)
		for j := range keys {
			keys[j] = fmt.Sprintf(`"k_%06d":%d`, 10*i+j, i)
		}
		evs[i] = ev(fmt.Sprintf("k-%04d", i), "{"+strings.Join(keys, ",")+"}")
	}
	h.send(evs...)

	want := make([]string, 50)
	for i := range want {
		want[i] = fmt.Sprintf("p_k_%06d Nullable(Int64)", i)
	}
	h.requireColumns(want...)
	for i := range 5 {
		h.requireRow(fmt.Sprintf("k-%04d", i), map[string]string{"_unpromoted": "[]", fmt.Sprintf("p_k_%06d", 10*i): fmt.Sprint(i)})
	}
	paths := make([]string, 10)
	for j := range paths {
		paths[j] = fmt.Sprintf("'/k_%06d'", 50+j)
	}
	h.requireRow("k-0005", map[string]string{"_unpromoted": "[" + strings.Join(paths, ",") + "]"})
	var listed uint64
	if err := h.conns[0].QueryRow(t.Context(), "SELECT sum(length(_unpromoted)) FROM "+h.db+".events WHERE event_id LIKE 'k-%'").Scan(&listed); err != nil {
		t.Fatal(err)
	}
	if listed != 9950 {
		t.Errorf("%d paths listed in _unpromoted, want 9950", listed)
	}
	if got := h.metric("batcher", "surge_schema_unpromoted_total", map[string]string{"reason": "rate"}); got != 9950 {
		t.Errorf("surge_schema_unpromoted_total{reason=rate} = %v, want 9950", got)
	}
	for name, want := range map[string]float64{
		"surge_schema_columns": 50, "surge_schema_hour_columns": 50, "surge_schema_hour_column_limit": 50,
		"surge_schema_column_limit": 200, "surge_schema_tenant_column_limit": 100,
	} {
		if got := h.metric("batcher", name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := h.metric("batcher", "surge_schema_tenant_columns", map[string]string{"tenant": "t1"}); got != 50 {
		t.Errorf("surge_schema_tenant_columns{tenant=t1} = %v, want 50", got)
	}
	// One ALTER of events_local per server (each is a shard here), and one
	// of events per server.
	if n := h.queryLog("ALTER TABLE %events_local% ADD COLUMN%p_k_000000%"); n != 2 {
		t.Errorf("%d ALTERs of events_local, want 2 (one per server)", n)
	}
	if n := h.queryLog("ALTER TABLE %.events ADD COLUMN%p_k_000000%"); n != 2 {
		t.Errorf("%d ALTERs of events, want 2 (one per server)", n)
	}

	// Ids as keys: deny-listed.
	h.send(ev("k-deny", `{"550e8400-e29b-41d4-a716-446655440000":1,"12345":1}`))
	h.requireRow("k-deny", map[string]string{"_unpromoted": "['/12345','/550e8400-e29b-41d4-a716-446655440000']"})
	h.requireColumns(want...)
	if n := h.queryLog("%MODIFY COLUMN%"); n != 0 {
		t.Errorf("%d MODIFY COLUMN statements, want none", n)
	}
}

// TestDeclaredSchema is the design's case 15 on 18.16: a schema file
// declares two columns in declared mode; nothing else is promoted, and a
// value the server's type cannot hold exactly is a conflict.
func TestDeclaredSchema(t *testing.T) {
	file := filepath.Join(t.TempDir(), "schema.yaml")
	err := os.WriteFile(file, []byte(`typed_columns: declared
columns:
  /plan: {type: "LowCardinality(String)"}
  /created_at: {type: "DateTime64(3, 'UTC')"}
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cfg := schema.DefaultConfig()
	cfg.File = file
	if err := cfg.Load(); err != nil {
		t.Fatal(err)
	}
	h := start(t, 4, cfg)
	h.requireColumns("p_created_at Nullable(DateTime('UTC'))", "p_plan Nullable(String)")

	h.send(ev("d-1", `{"plan":"pro","created_at":"2026-11-27T10:00:00.123Z","extra":1}`))
	h.send(ev("d-2", `{"created_at":"soon"}`))
	h.send(ev("d-3", `{"created_at":"2026-11-27T10:00:01Z"}`))
	h.requireColumns("p_created_at Nullable(DateTime('UTC'))", "p_plan Nullable(String)")
	h.requireRow("d-1", map[string]string{
		"p_plan": "pro", "p_created_at": "NULL",
		"_conflicts": `{"/created_at":"2026-11-27T10:00:00.123Z"}`, "_unpromoted": "['/extra']",
	})
	h.requireRow("d-2", map[string]string{"p_created_at": "NULL", "_conflicts": `{"/created_at":"soon"}`})
	h.requireRow("d-3", map[string]string{"p_created_at": "2026-11-27 10:00:01", "_conflicts": ""})
}
