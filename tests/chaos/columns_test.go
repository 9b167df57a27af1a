package chaos

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/testkit/chserver"
)

// checkAgreedColumns checks that every column of the agreed schema (the
// load brought a new key every few requests, under every fault) is in
// events_local and events of every replica of every shard, with the type
// the schema says, within a reconcile period, and that every value is in
// its column or accounted for.
func checkAgreedColumns(t *testing.T, js jetstream.JetStream, replicaSets [][]string) {
	t.Helper()
	reg, err := schema.OpenRegistry(t.Context(), js, "events", 3, 10*time.Second)
	require.NoError(t, err)
	doc := reg.Current().Doc
	require.NotEmpty(t, doc.Columns, "no typed column agreed under load")
	var servers []string
	for _, set := range replicaSets {
		servers = append(servers, set...)
	}
	ok := assert.EventuallyWithT(t, func(col *assert.CollectT) {
		for _, addr := range servers {
			for _, table := range []string{"events_local", "events"} {
				out, err := chserver.Query(addr, "SELECT name, type FROM system.columns WHERE database = 'surge' AND table = '"+table+"' FORMAT TabSeparated")
				if !assert.NoError(col, err) {
					return
				}
				have := map[string]string{}
				for _, line := range strings.Split(out, "\n") {
					if name, typ, found := strings.Cut(line, "\t"); found {
						have[name] = typ
					}
				}
				for name, c := range doc.Columns {
					assert.Contains(col, have, name, "%s %s", addr, table)
					if k := c.Kind(); k != 0 && have[name] != "" {
						assert.Equal(col, schema.ColumnType(k, c.CHType, schema.Server{Major: 18, Minor: 16}), have[name], "%s %s %s", addr, table, name)
					}
				}
			}
		}
	}, 90*time.Second, time.Second)
	if !ok {
		return
	}
	t.Logf("the %d agreed columns are on every replica's local and Distributed tables", len(doc.Columns))
	// Values present: a row whose properties hold a key with a column has
	// the value in it, or the path in _unpromoted (its batch was built
	// before the column was agreed), or in _conflicts, on some replica of
	// its shard. On 18.16 a replica that was inactive while columns were
	// added (restarted, its old ZooKeeper session not yet expired) can read
	// NULL there for rows it got from the other replica before its own
	// ALTER (docs/TYPED-COLUMNS.md, "In brief"): such rows are counted and logged,
	// and must be whole on another replica.
	for shard := range replicaSets[0] {
		for name, c := range doc.Columns {
			key := strings.TrimPrefix(c.Path, "/")
			if strings.Contains(key, "/") {
				continue // the load's keys are top-level
			}
			best := -1
			var counts []string
			for r := range replicaSets {
				addr := replicaSets[r][shard]
				// ownRows skips the crash loop's prefilled rows (no properties)
				// by the sorting key instead of reading them all.
				n, err := chserver.Query(addr, fmt.Sprintf(`SELECT count() FROM surge.events_local WHERE %s AND visitParamHas(properties, '%s')
					AND %s IS NULL AND NOT has(_unpromoted, '%s') AND NOT visitParamHas(_conflicts, '%s') FORMAT TabSeparated`, ownRows, key, name, c.Path, c.Path))
				require.NoError(t, err)
				v, err := strconv.Atoi(strings.TrimSpace(n))
				require.NoError(t, err)
				counts = append(counts, fmt.Sprintf("%s: %d", addr, v))
				if best < 0 || v < best {
					best = v
				}
			}
			require.Zero(t, best, "shard server %d: rows whose %s is in properties but neither in %s, _unpromoted nor _conflicts on any replica (%s)",
				shard, c.Path, name, strings.Join(counts, ", "))
			if len(replicaSets) > 1 {
				for _, cnt := range counts {
					if !strings.HasSuffix(cnt, ": 0") {
						t.Logf("rows with %s NULL though in properties (a replica that was inactive while it was added): %s", name, cnt)
					}
				}
			}
		}
	}
}
