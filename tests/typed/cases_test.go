package typed

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/surge-events/surge/pkg/schema"
)

// ev is one /v1/events event of user u1 with properties props.
func ev(id, props string) string {
	return fmt.Sprintf(`{"event_id":%q,"user_id":"u1","type":"buy","properties":%s}`, id, props)
}

// TestInference runs the design's cases 1 to 10 and the extra checks, in
// order, on one stack: each case adds to the table's columns, and the
// columns are checked whole after each (every server's events_local and
// events).
func TestInference(t *testing.T) {
	h := start(t, 4, schema.DefaultConfig())
	var cols []string
	addCols := func(h *harness, c ...string) {
		cols = append(cols, c...)
		h.requireColumns(cols...)
	}
	conflicts := func(h *harness, reason string) float64 {
		return h.metric("batcher", "surge_schema_conflicts_total", map[string]string{"reason": reason})
	}

	t.Run("1 basic inference", func(t *testing.T) {
		h := h.on(t)
		props := `{"plan":"pro","n":3,"price":9.99,"ok":true}`
		h.send(ev("c1", props))
		addCols(h, "p_ok Nullable(UInt8)", "p_n Nullable(Int64)", "p_plan Nullable(String)", "p_price Nullable(Float64)")
		h.requireRow("c1", map[string]string{
			"p_plan": "pro", "p_n": "3", "p_price": "9.99", "p_ok": "1",
			"_conflicts": "", "_unpromoted": "[]", "properties": props, "tenant": "t1", "user_id": "u1",
		})
	})

	t.Run("2 number then string", func(t *testing.T) {
		h := h.on(t)
		before := conflicts(h, "type")
		h.send(ev("c2-1", `{"n":3}`))
		h.send(ev("c2-2", `{"n":"x"}`))
		h.send(ev("c2-3", `{"n":"42"}`))
		addCols(h)
		h.requireRow("c2-1", map[string]string{"p_n": "3", "_conflicts": ""})
		h.requireRow("c2-2", map[string]string{"p_n": "NULL", "_conflicts": `{"/n":"x"}`, "properties": `{"n":"x"}`})
		h.requireRow("c2-3", map[string]string{"p_n": "42", "_conflicts": ""})
		if got := conflicts(h, "type") - before; got != 1 {
			t.Errorf("surge_schema_conflicts_total{reason=type} grew by %v, want 1", got)
		}
	})

	t.Run("3 conflict inside the introducing batch", func(t *testing.T) {
		h := h.on(t)
		h.send(ev("c3-1", `{"v":1}`), ev("c3-2", `{"v":"a"}`), ev("c3-3", `{"v":true}`))
		addCols(h, "p_v Nullable(String)")
		h.requireRow("c3-1", map[string]string{"p_v": "1", "_conflicts": ""})
		h.requireRow("c3-2", map[string]string{"p_v": "a", "_conflicts": ""})
		h.requireRow("c3-3", map[string]string{"p_v": "true", "_conflicts": ""})
	})

	t.Run("4 int then float, float then int", func(t *testing.T) {
		h := h.on(t)
		h.send(ev("c4-1", `{"amount":5,"f":1.5}`))
		h.send(ev("c4-2", `{"amount":5.0,"f":2}`))
		h.send(ev("c4-3", `{"amount":5.5}`))
		h.send(ev("c4-4", `{"f":9007199254740993}`))
		addCols(h, "p_amount Nullable(Int64)", "p_f Nullable(Float64)")
		h.requireRow("c4-2", map[string]string{"p_amount": "5", "p_f": "2", "_conflicts": ""})
		h.requireRow("c4-3", map[string]string{"p_amount": "NULL", "_conflicts": `{"/amount":5.5}`})
		h.requireRow("c4-4", map[string]string{"p_f": "NULL", "_conflicts": `{"/f":9007199254740993}`})
	})

	t.Run("5 booleans", func(t *testing.T) {
		h := h.on(t)
		h.send(ev("c5-1", `{"flag":true}`))
		h.send(ev("c5-2", `{"flag":false}`))
		h.send(ev("c5-3", `{"flag":1}`))
		h.send(ev("c5-4", `{"flag":"true"}`))
		addCols(h, "p_flag Nullable(UInt8)")
		h.requireRow("c5-1", map[string]string{"p_flag": "1", "_conflicts": ""})
		h.requireRow("c5-2", map[string]string{"p_flag": "0", "_conflicts": ""})
		h.requireRow("c5-3", map[string]string{"p_flag": "NULL", "_conflicts": `{"/flag":1}`})
		h.requireRow("c5-4", map[string]string{"p_flag": "NULL", "_conflicts": `{"/flag":"true"}`})
	})

	t.Run("6 nested objects and depth", func(t *testing.T) {
		h := h.on(t)
		h.send(ev("c6", `{"context":{"page":{"url":"/a","title":"A"}},"a":{"b":{"c":{"d":{"e":1}}}}}`))
		addCols(h, "p_a_b_c Nullable(String)", "p_context_page_title Nullable(String)", "p_context_page_url Nullable(String)")
		h.requireRow("c6", map[string]string{"p_context_page_url": "/a", "p_context_page_title": "A", "p_a_b_c": `{"d":{"e":1}}`})
	})

	t.Run("7 arrays", func(t *testing.T) {
		h := h.on(t)
		h.send(ev("c7-1", `{"tags":["a","b"],"nums":[1,2.5],"maybe":[1,null],"matrix":[[1,2],[3]],"items":[{"sku":"A1"}],"empty":[]}`))
		addCols(h, "p_items Nullable(String)", "p_matrix Nullable(String)", "p_maybe Array(Nullable(Int64))",
			"p_nums Array(Nullable(Float64))", "p_tags Array(Nullable(String))")
		h.requireRow("c7-1", map[string]string{
			"p_tags": "['a','b']", "p_nums": "[1,2.5]", "p_maybe": "[1,NULL]",
			"p_matrix": "[[1,2],[3]]", "p_items": `[{"sku":"A1"}]`, "_unpromoted": "[]",
		})
		// No Nested coupling of array sizes: other lengths insert fine.
		h.send(ev("c7-2", `{"tags":["x"],"nums":[1,2,3]}`))
		h.requireRow("c7-2", map[string]string{"p_tags": "['x']", "p_nums": "[1,2,3]", "p_maybe": "[]"})
	})

	t.Run("8 dots, spaces, unicode, case, collisions", func(t *testing.T) {
		h := h.on(t)
		before := conflicts(h, "collision")
		h.send(ev("c8-1", `{"a.b":1,"first name":"x","Странное Имя":2,"userID":"u","HTTPServer":"h"}`))
		h.send(ev("c8-2", `{"a":{"b":"s"},"UserId":"v"}`))
		addCols(h, "p_a_b Nullable(Int64)", "p_first_name Nullable(String)", "p_ue3bd2767 Nullable(Int64)",
			"p_user_id Nullable(String)", "p_http_server Nullable(String)")
		h.requireRow("c8-1", map[string]string{"p_a_b": "1", "p_first_name": "x", "p_ue3bd2767": "2", "p_user_id": "u", "p_http_server": "h"})
		h.requireRow("c8-2", map[string]string{"p_a_b": "NULL", "p_user_id": "NULL", "_conflicts": `{"/UserId":"v","/a/b":"s"}`})
		if got := conflicts(h, "collision") - before; got != 2 {
			t.Errorf("surge_schema_conflicts_total{reason=collision} grew by %v, want 2", got)
		}
	})

	t.Run("9 reserved names", func(t *testing.T) {
		h := h.on(t)
		h.send(`{"event_id":"c9","user_id":"real","type":"buy","properties":{"ts":"yesterday","tenant":"evil","event_id":"x","properties":"y","_conflicts":"z","seq":-1,"shard":99}}`)
		addCols(h, "p_conflicts Nullable(String)", "p_event_id Nullable(String)", "p_properties Nullable(String)",
			"p_seq Nullable(Int64)", "p_shard Nullable(Int64)", "p_tenant Nullable(String)", "p_ts Nullable(String)")
		h.requireRow("c9", map[string]string{
			"tenant": "t1", "event_id": "c9", "user_id": "real",
			"p_ts": "yesterday", "p_tenant": "evil", "p_event_id": "x", "p_properties": "y", "p_conflicts": "z",
			"p_seq": "-1", "p_shard": "99", "_conflicts": "",
		})
		if got := h.row("c9", "toString(seq > 0)", "toString(shard < 4)"); got["toString(seq > 0)"] != "1" || got["toString(shard < 4)"] != "1" {
			t.Errorf("base seq and shard taken from properties: %v", got)
		}
	})

	t.Run("10 very long keys", func(t *testing.T) {
		h := h.on(t)
		long := strings.Repeat("k", 300)
		cyr := strings.Repeat("я", 200)
		h.send(ev("c10-1", fmt.Sprintf(`{%q:1}`, long)))
		h.send(ev("c10-2", fmt.Sprintf(`{%q:1}`, cyr)))
		addCols(h, "p_kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk_17b16d8e Nullable(Int64)", "p_ua7036d03 Nullable(Int64)")
		// 1,000 ordinary events after them: every insert succeeds (on
		// 18.16 a column file name past the limit fails every insert).
		var evs []string
		for i := range 1000 {
			evs = append(evs, ev(fmt.Sprintf("c10-n%04d", i), fmt.Sprintf(`{"n":%d}`, i)))
		}
		for i := 0; i < len(evs); i += 100 {
			h.send(evs[i : i+100]...)
		}
		h.requireRow("c10-n0999", map[string]string{"p_n": "999"})
	})

	t.Run("extra: null first, 2^64, duplicate keys", func(t *testing.T) {
		h := h.on(t)
		h.send(ev("x-1", `{"z":null}`))
		h.requireColumns(cols...)
		h.send(ev("x-2", `{"z":5}`))
		h.send(ev("x-3", `{"big":18446744073709551616}`))
		h.send(ev("x-4", `{"dup":1,"dup":"x"}`))
		addCols(h, "p_z Nullable(Int64)", "p_big Nullable(String)", "p_dup Nullable(String)")
		h.requireRow("x-1", map[string]string{"p_z": "NULL", "_unpromoted": "[]"})
		h.requireRow("x-2", map[string]string{"p_z": "5"})
		h.requireRow("x-3", map[string]string{"p_big": "18446744073709551616"})
		h.requireRow("x-4", map[string]string{"p_dup": "x"})
	})

	t.Run("segment context", func(t *testing.T) {
		h := h.on(t)
		body := `{"userId":"s1","event":"Viewed","messageId":"seg-1","properties":{"plan":"team"},
			"context":{"page":{"url":"https://x.test/a","path":"/a"},"userAgent":"UA/1","library":{"name":"analytics-node","version":"6.2.0"},"extra":{"k":1}}}`
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.st.IngestURL+"/v1/track", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(apiKey+":")))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("track: status %d", resp.StatusCode)
		}
		h.waitRows([]string{"seg-1"})
		addCols(h, "context_library_name Nullable(String)", "context_library_version Nullable(String)",
			"context_page_path Nullable(String)", "context_page_url Nullable(String)", "context_user_agent Nullable(String)")
		h.requireRow("seg-1", map[string]string{
			"p_plan": "team", "context_page_url": "https://x.test/a", "context_page_path": "/a",
			"context_user_agent": "UA/1", "context_library_name": "analytics-node", "context_library_version": "6.2.0",
			"_unpromoted": "[]",
		})
	})
}
