package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

func allAnswered(servers []Server) bool {
	for _, s := range servers {
		if s.Error != "" {
			return false
		}
	}
	return true
}

// shardRows is what ClickHouse holds of a shard.
type shardRows struct{ watermark, rows uint64 }

// chServer is one ClickHouse shard server entry and its replicas'
// connections, opened once and kept.
type chServer struct {
	entry    string
	replicas []string
	conns    []driver.Conn
}

func (s *chServer) close() error {
	var errs []error
	for _, c := range s.conns {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	s.conns = nil
	return errors.Join(errs...)
}

// clickHouse asks every server, the first of its replicas that answers,
// for each shard's watermark and row count; and every replica that
// answers for the columns of its events_local, by address.
func (c *Collector) clickHouse(ctx context.Context) (map[int]shardRows, []Server, map[string]map[string]bool) {
	rows := map[int]shardRows{}
	columns := map[string]map[string]bool{}
	var servers []Server
	for _, s := range c.ch {
		srv := Server{Addr: s.entry}
		got, failed, err := c.queryServer(ctx, s)
		if err != nil {
			srv.Error = err.Error()
		}
		for k, r := range got {
			prev := rows[k]
			rows[k] = shardRows{watermark: max(prev.watermark, r.watermark), rows: prev.rows + r.rows}
		}
		servers = append(servers, srv)
		for i, addr := range s.replicas {
			if failed[i] {
				continue // not asked twice in one look
			}
			if cols, err := c.replicaColumns(ctx, s, i); err == nil {
				columns[addr] = cols
			}
		}
	}
	return rows, servers, columns
}

// queryServer reads the shards' rows from the first replica of s that
// answers; failed are the replicas that did not.
func (c *Collector) queryServer(ctx context.Context, s *chServer) (got map[int]shardRows, failed map[int]bool, err error) {
	query := fmt.Sprintf("SELECT shard, max(seq), count() FROM %s.events_local GROUP BY shard", c.cfg.Database)
	failed = map[int]bool{}
	var errs []error
	for i, addr := range s.replicas {
		conn, err := c.conn(s, i)
		if err != nil {
			failed[i] = true
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		got, err := queryRows(ctx, conn, query, c.cfg.Timeout)
		if err == nil {
			return got, failed, nil
		}
		failed[i] = true
		if len(s.replicas) > 1 {
			err = fmt.Errorf("%s: %w", addr, err)
		}
		errs = append(errs, err)
	}
	return nil, failed, errors.Join(errs...)
}

// conn is the connection to replica i of s, opened at its first use.
func (c *Collector) conn(s *chServer, i int) (driver.Conn, error) {
	if s.conns == nil {
		s.conns = make([]driver.Conn, len(s.replicas))
	}
	if s.conns[i] == nil {
		conn, err := clickhouse.Open(&clickhouse.Options{
			Addr:        []string{s.replicas[i]},
			Auth:        clickhouse.Auth{Username: c.cfg.ClickHouseUser, Password: c.cfg.ClickHousePassword},
			DialTimeout: c.cfg.Timeout,
		})
		if err != nil {
			return nil, err
		}
		s.conns[i] = conn
	}
	return s.conns[i], nil
}

// replicaColumns reads the column names of events_local on replica i of
// s; none when the table does not exist there.
func (c *Collector) replicaColumns(ctx context.Context, s *chServer, i int) (map[string]bool, error) {
	conn, err := c.conn(s, i)
	if err != nil {
		return nil, err
	}
	qctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	rs, err := conn.Query(qctx, "SELECT name FROM system.columns WHERE database = ? AND table = 'events_local'", c.cfg.Database)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := map[string]bool{}
	for rs.Next() {
		var name string
		if err := rs.Scan(&name); err != nil {
			return nil, err
		}
		out[name] = true
	}
	return out, rs.Err()
}

func queryRows(ctx context.Context, conn driver.Conn, query string, timeout time.Duration) (map[int]shardRows, error) {
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rs, err := conn.Query(qctx, query)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := map[int]shardRows{}
	for rs.Next() {
		var (
			k        uint16
			wm, rows uint64
		)
		if err := rs.Scan(&k, &wm, &rows); err != nil {
			return nil, err
		}
		out[int(k)] = shardRows{watermark: wm, rows: rows}
	}
	return out, rs.Err()
}
