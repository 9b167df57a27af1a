// Package schemaview reads what an operator needs to judge a table's
// typed columns: the columns the schema registry agreed on beside the
// columns each ClickHouse server holds, how full each column is, which
// property paths conflict with their column's type and which were left
// out of the typed columns. It only reads: it never creates the schema
// bucket nor changes a table.
//
// Every query is valid on ClickHouse 18.16, which has no JSON functions
// but visitParam*: _conflicts is parsed here, from a bounded sample.
package schemaview

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// The tables the sink writes: every row lands in LocalTable of its
// shard's servers, and DistributedTable answers across the shards.
const (
	LocalTable       = "events_local"
	DistributedTable = "events"
)

// Server is one ClickHouse server: a replica of a shard.
type Server struct {
	Addr string
	Conn driver.Conn
}

// Source is a deployment's ClickHouse: the database that holds the
// tables and each shard's replicas. Safe for concurrent use.
type Source struct {
	// Database holds events_local and events.
	Database string
	// Shards lists each ClickHouse shard's replicas, the first preferred.
	Shards [][]Server
	// Timeout bounds each query; 30 s when zero.
	Timeout time.Duration
}

// Open connects to the replicas of each shard (entries as the sink's
// clickhouse.addrs: one per shard, replicas joined by "|", already split
// here). The connections dial at their first query.
func Open(database string, shards [][]string, auth clickhouse.Auth, timeout time.Duration) (*Source, error) {
	if len(shards) == 0 {
		return nil, errors.New("no ClickHouse server given")
	}
	s := &Source{Database: database, Timeout: timeout}
	for _, replicas := range shards {
		var servers []Server
		for _, addr := range replicas {
			conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: auth, DialTimeout: timeout})
			if err != nil {
				_ = s.Close()
				return nil, fmt.Errorf("clickhouse %s: %w", addr, err)
			}
			servers = append(servers, Server{Addr: addr, Conn: conn})
		}
		s.Shards = append(s.Shards, servers)
	}
	return s, nil
}

// Close closes every connection.
func (s *Source) Close() error {
	var errs []error
	for _, shard := range s.Shards {
		for _, srv := range shard {
			errs = append(errs, srv.Conn.Close())
		}
	}
	return errors.Join(errs...)
}

func (s *Source) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 30 * time.Second
	}
	return s.Timeout
}

// table is database.name.
func (s *Source) table(name string) string { return s.Database + "." + name }

// query runs sql on srv and hands each row to scan.
func (s *Source) query(ctx context.Context, srv Server, scan func(driver.Rows) error, sql string, args ...any) error {
	qctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	rows, err := srv.Conn.Query(qctx, sql, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// tableColumns is what system.columns says of one server's tables.
type tableColumns struct {
	// local and distributed map each column of events_local and events to
	// its ClickHouse type; nil when the table does not exist.
	local, distributed map[string]string
	// comments are events_local's column comments, by name.
	comments map[string]string
}

// columns reads the columns of events_local and events on srv. A server
// whose system.columns has no comment column (older than comments) is
// asked again without it.
func (s *Source) columns(ctx context.Context, srv Server) (tableColumns, error) {
	tc := tableColumns{comments: map[string]string{}}
	read := func(withComment bool) error {
		tc.local, tc.distributed = nil, nil
		comment := "''"
		if withComment {
			comment = "comment"
		}
		return s.query(ctx, srv, func(rows driver.Rows) error {
			var table, name, typ, c string
			if err := rows.Scan(&table, &name, &typ, &c); err != nil {
				return err
			}
			m := &tc.local
			if table == DistributedTable {
				m = &tc.distributed
			}
			if *m == nil {
				*m = map[string]string{}
			}
			(*m)[name] = typ
			if table == LocalTable && c != "" {
				tc.comments[name] = c
			}
			return nil
		}, "SELECT table, name, type, "+comment+" FROM system.columns WHERE database = ? AND table IN (?, ?)",
			s.Database, LocalTable, DistributedTable)
	}
	err := read(true)
	if err != nil && strings.Contains(err.Error(), "comment") {
		err = read(false)
	}
	if err != nil {
		return tc, fmt.Errorf("columns of %s on %s: %w", s.Database, srv.Addr, err)
	}
	return tc, nil
}

// first runs fn on the first server, in shard then replica order, where it
// succeeds; the errors of every server tried when none does.
func (s *Source) first(fn func(Server) error) error {
	var errs []error
	for _, shard := range s.Shards {
		for _, srv := range shard {
			err := fn(srv)
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", srv.Addr, err))
		}
	}
	return errors.Join(errs...)
}

// shardFirst runs fn on the first replica of shard where it succeeds.
func shardFirst(shard []Server, fn func(Server) error) error {
	var errs []error
	for _, srv := range shard {
		err := fn(srv)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", srv.Addr, err))
	}
	return errors.Join(errs...)
}

// quote quotes a column name as an identifier.
func quote(name string) string {
	return "`" + strings.ReplaceAll(strings.ReplaceAll(name, `\`, `\\`), "`", "\\`") + "`"
}
