package schema

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
)

// TestProjectPaths: a projection counts, per tenant, reason and path, the
// conflicting values and the paths a limit left unpromoted, with the row
// of the first; paths that wait for their column or are denied are not
// counted.
func TestProjectPaths(t *testing.T) {
	p := newProjector(t, func(c *Config) { c.MaxKeysPerEvent = 2 })
	doc := &Doc{Format: Format, Columns: map[string]*Col{
		"p_n": {Path: "/n", Type: "int64", Origin: Inferred, Tenant: "a", Added: time.Now()},
	}}
	b := &batch.Batch{}
	for i, row := range []struct{ tenant, props string }{
		{"a", `{"n":1}`},
		{"a", `{"n":"x"}`},
		{"b", `{"n":"y"}`},
		{"a", `{"n":"z","m":1,"o":2}`}, // o is past the 2 keys an event may have
		{"a", `{"12345":1}`},           // denied: not the tenant's problem
		{"b", `{"q":1}`},               // pending: waits for its column
		{"b", `{"n":"w"}`},             // a path's second tenant, counted again
	} {
		b.Append(uint64(i+1), []event.Event{{EventID: fmt.Sprint("e", i), Tenant: row.tenant, Properties: row.props}})
	}
	stats := p.Project(p.Parse(b), doc, b)
	require.ElementsMatch(t, []PathCount{
		{Key: PathKey{Tenant: "a", Conflict: true, Reason: ReasonType, Path: "/n"}, N: 2, Row: 1},
		{Key: PathKey{Tenant: "b", Conflict: true, Reason: ReasonType, Path: "/n"}, N: 2, Row: 2},
		{Key: PathKey{Tenant: "a", Reason: ReasonKeys, Path: "/o"}, N: 1, Row: 3},
	}, stats.Paths, "each key once")
	require.Equal(t, map[string]int{ReasonKeys: 1, ReasonDeny: 1, ReasonPending: 2}, stats.Unpromoted)
}
