package schema_test

import (
	"fmt"
	"time"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/schema"
)

func ExampleProjector() {
	p, err := schema.NewProjector(schema.DefaultConfig())
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	var doc *schema.Doc // the agreed schema: none yet
	for _, props := range [][]string{
		{`{"plan":"pro","n":3}`, `{"plan":"team","n":4,"tags":["a"]}`},
		{`{"plan":"pro","n":"x","12345":1}`},
	} {
		b := &batch.Batch{}
		for i, pr := range props {
			b.Append(uint64(i+1), []event.Event{{EventID: fmt.Sprint(i), Tenant: "acme", Properties: pr}})
		}
		parsed := p.Parse(b)
		// The batcher proposes the new columns by compare-and-swap, then
		// projects on what was agreed.
		doc, _ = p.Plan(parsed, doc, now)
		stats := p.Project(parsed, doc, b)
		for _, c := range b.Typed {
			fmt.Printf("%s %s %d rows\n", c.Name, c.Kind, c.Rows())
		}
		fmt.Printf("_conflicts %q _unpromoted %q {%v %v}\n", b.Conflicts, b.Unpromoted, stats.Conflicts, stats.Unpromoted)
	}
	// Output:
	// p_n int64 2 rows
	// p_plan string 2 rows
	// p_tags array(string) 2 rows
	// _conflicts ["" ""] _unpromoted [[] []] {map[] map[]}
	// p_plan string 1 rows
	// _conflicts ["{\"/n\":\"x\"}"] _unpromoted [["/12345"]] {map[type:1] map[deny:1]}
}
