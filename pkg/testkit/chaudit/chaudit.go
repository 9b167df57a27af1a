// Package chaudit keeps, for tests, a record of every block inserted into
// the sink's events_local that no merge can fold, and reads exactly-once
// from it.
//
// events_local is a ReplacingMergeTree keyed by (tenant, type, ts,
// event_id): a background merge may fold a doubled insert into one row
// before a test's count() or uniqExact(event_id) reads the table, so a
// count of the table cannot prove an event was inserted once. Install
// adds, on each server, a plain MergeTree table (nothing folds in it) and
// a materialized view that copies the event_id, tenant, shard and seq of
// every block inserted into events_local there. Inserted reads the copies
// back, as many times as each event was inserted.
//
// Measured on ClickHouse 18.16.1 (one shard of two replicas with
// ZooKeeper): a view runs on the server that takes the insert only; a
// replica that fetches the part does not run it, so with replicas the
// audit of every replica is read and added up. A block the replicated
// table deduplicates (the same block inserted again, on the same replica
// or the other) is not passed to the view, so a retry ClickHouse itself
// dropped is not counted; a block that differs in any value is, and a
// merge of the table (OPTIMIZE ... FINAL) leaves the audit as it was.
package chaudit

import (
	"bufio"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/testkit/chserver"
)

// Database is the database the audit of the sink's database lives in:
// apart from it, so nothing that lists the sink's tables sees the audit.
func Database(database string) string { return database + "_audit" }

// identifier is what Install accepts as a database name: it is spliced
// into DDL.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Statements is the DDL of the audit of database's events_local, in
// order: its database, the MergeTree table of copies (inserts) and the
// materialized view that fills it. Each is idempotent; the view needs
// events_local to exist.
func Statements(database string) []string {
	audit := Database(database)
	return []string{
		"CREATE DATABASE IF NOT EXISTS " + audit,
		"CREATE TABLE IF NOT EXISTS " + audit + ".inserts (event_id String, tenant String, shard UInt16, seq UInt64) " +
			"ENGINE = MergeTree() ORDER BY (shard, seq)",
		"CREATE MATERIALIZED VIEW IF NOT EXISTS " + audit + ".inserts_view TO " + audit + ".inserts " +
			"AS SELECT event_id, tenant, shard, seq FROM " + database + ".events_local",
	}
}

// pollEvery is how often Install looks for the sink's table.
const pollEvery = 50 * time.Millisecond

// Install waits until database.events_local exists on every server at
// servers (HTTP addresses: every server, and every replica of a
// replicated cluster) and adds the audit on each. It must run before the
// first insert: the view copies only the blocks inserted after it, so a
// test installs it once the sink has made its schema and before it sends
// events. It fails no test, so it may run off the test goroutine.
func Install(ctx context.Context, servers []string, database string) error {
	if !identifier.MatchString(database) {
		return fmt.Errorf("audit: database %q is not a plain identifier", database)
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for _, srv := range servers {
		for {
			n, err := chserver.Query(srv, "SELECT count() FROM system.tables WHERE database = '"+database+"' AND name = 'events_local'")
			if err == nil && n == "1" {
				break
			}
			if err == nil {
				err = fmt.Errorf("no table %s.events_local", database)
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("audit on %s: %w (last: %w)", srv, ctx.Err(), err)
			case <-tick.C:
			}
		}
		for _, stmt := range Statements(database) {
			if _, err := chserver.Query(srv, stmt); err != nil {
				return fmt.Errorf("audit on %s: %w", srv, err)
			}
		}
	}
	return nil
}

// Inserted reads the audit of database on every server at servers (HTTP
// addresses: with replicas, every replica of every shard, as each block is
// copied on the one replica it was inserted on) and returns how many
// times each event id was inserted; of tenant only, unless tenant is "".
// It fails no test, so it may run off the test goroutine.
func Inserted(servers []string, database, tenant string) (map[string]int, error) {
	if !identifier.MatchString(database) {
		return nil, fmt.Errorf("audit: database %q is not a plain identifier", database)
	}
	if strings.ContainsAny(tenant, `'\`) {
		return nil, fmt.Errorf("audit: unexpected tenant %q", tenant)
	}
	q := "SELECT event_id FROM " + Database(database) + ".inserts"
	if tenant != "" {
		q += " WHERE tenant = '" + tenant + "'"
	}
	out := map[string]int{}
	for _, srv := range servers {
		ans, err := chserver.Query(srv, q+" FORMAT TabSeparated")
		if err != nil {
			return nil, fmt.Errorf("audit on %s: %w", srv, err)
		}
		sc := bufio.NewScanner(strings.NewReader(ans))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if sc.Text() != "" {
				out[sc.Text()]++
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("audit on %s: %w", srv, err)
		}
	}
	return out, nil
}

// Report compares how many times each event was inserted (Inserted) with
// the events wanted once.
type Report struct {
	// Twice are the wanted ids inserted more than once, each as "id xN".
	Twice []string
	// Never are the wanted ids with no copy in the audit.
	Never []string
	// Unwanted are the ids inserted that were not wanted.
	Unwanted []string
}

// Compare compares inserted (from Inserted) with want, the ids wanted
// exactly once.
func Compare[V any](inserted map[string]int, want map[string]V) Report {
	var r Report
	for id, n := range inserted {
		if _, ok := want[id]; !ok {
			r.Unwanted = append(r.Unwanted, id)
		} else if n > 1 {
			r.Twice = append(r.Twice, id+" x"+strconv.Itoa(n))
		}
	}
	for id := range want {
		if inserted[id] == 0 {
			r.Never = append(r.Never, id)
		}
	}
	slices.Sort(r.Twice)
	slices.Sort(r.Never)
	slices.Sort(r.Unwanted)
	return r
}

// Err is nil when every wanted id was inserted exactly once and no other
// id was inserted; otherwise it counts the ids of each kind and names a
// few.
func (r Report) Err() error {
	if len(r.Twice)+len(r.Never)+len(r.Unwanted) == 0 {
		return nil
	}
	return fmt.Errorf("not exactly once: %d inserted more than once %s, %d never inserted %s, %d inserted but not wanted %s",
		len(r.Twice), some(r.Twice), len(r.Never), some(r.Never), len(r.Unwanted), some(r.Unwanted))
}

// AtMostOnce is nil when no id was inserted more than once and none that
// was not wanted, whatever is missing. It is the audit's part of the check
// where a ClickHouse server is SIGKILLed: the server writes a block to the
// table before the view copies it, so a kill in between leaves rows in
// the table that the audit has not; the table, whose merges can only
// remove rows, then shows that every event arrived.
func (r Report) AtMostOnce() error {
	if len(r.Twice)+len(r.Unwanted) == 0 {
		return nil
	}
	return fmt.Errorf("not at most once: %d inserted more than once %s, %d inserted but not wanted %s",
		len(r.Twice), some(r.Twice), len(r.Unwanted), some(r.Unwanted))
}

// some names up to five of ids.
func some(ids []string) string {
	if len(ids) > 5 {
		return fmt.Sprintf("%v...", ids[:5])
	}
	return fmt.Sprint(ids)
}
