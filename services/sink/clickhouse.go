package sink

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/batch"
)

// server is one ClickHouse shard server and the connection pool to it.
// Shard loops share it; the driver's pool is safe for concurrent use.
type server struct {
	addr     string
	database string
	cluster  string
	conn     driver.Conn
	// schemaOK is cleared when an insert says the table or database is
	// gone, so the next attempt creates them again.
	schemaOK atomic.Bool
}

var _ store = (*server)(nil)

// store is what a shard loop needs of its ClickHouse server.
type store interface {
	// Watermark is the highest EVENTS sequence of shard held by the server.
	Watermark(ctx context.Context, shard int) (uint64, error)
	// Present is the set of EVENTS sequences of shard in [first, last] the
	// server holds.
	Present(ctx context.Context, shard int, first, last uint64) (map[uint64]struct{}, error)
	// Insert writes b as one block.
	Insert(ctx context.Context, b *batch.Batch) error
	// Addr names the server, for spans and logs.
	Addr() string
}

func openServer(c ClickHouseConfig, addr string) (*server, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Protocol: clickhouse.Native,
		Addr:     []string{addr},
		Auth: clickhouse.Auth{
			Database: "default", // the sink's database may not exist yet
			Username: c.Username,
			Password: c.Password,
		},
		DialTimeout:  c.DialTimeout,
		MaxOpenConns: 8,
		MaxIdleConns: 4,
		ClientInfo: clickhouse.ClientInfo{
			Products: []struct{ Name, Version string }{{Name: "surge-sink", Version: "1"}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", addr, err)
	}
	return &server{addr: addr, database: c.Database, cluster: c.Cluster, conn: conn}, nil
}

// Addr is the server's native address.
func (s *server) Addr() string { return s.addr }

// EnsureSchema creates the database and both tables when missing.
func (s *server) EnsureSchema(ctx context.Context) error {
	if s.schemaOK.Load() {
		return nil
	}
	for _, stmt := range SchemaStatements(s.database, s.cluster) {
		if err := s.conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("create schema on %s: %w", s.addr, err)
		}
	}
	s.schemaOK.Store(true)
	return nil
}

// Watermark reads the highest EVENTS sequence of shard on the server.
func (s *server) Watermark(ctx context.Context, shard int) (uint64, error) {
	if err := s.EnsureSchema(ctx); err != nil {
		return 0, err
	}
	var wm uint64
	if err := s.conn.QueryRow(ctx, WatermarkQuery(s.database), shard).Scan(&wm); err != nil {
		s.noteSchemaLoss(err)
		return 0, fmt.Errorf("read watermark of shard %d on %s: %w", shard, s.addr, err)
	}
	return wm, nil
}

// Present is the set of EVENTS sequences of shard in [first, last] the
// server holds.
func (s *server) Present(ctx context.Context, shard int, first, last uint64) (map[uint64]struct{}, error) {
	if err := s.EnsureSchema(ctx); err != nil {
		return nil, err
	}
	rows, err := s.conn.Query(ctx, PresentQuery(s.database), shard, first, last)
	if err != nil {
		s.noteSchemaLoss(err)
		return nil, fmt.Errorf("read sequences of shard %d on %s: %w", shard, s.addr, err)
	}
	defer rows.Close()
	present := make(map[uint64]struct{})
	for rows.Next() {
		var seq uint64
		if err := rows.Scan(&seq); err != nil {
			return nil, fmt.Errorf("read sequences of shard %d on %s: %w", shard, s.addr, err)
		}
		present[seq] = struct{}{}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read sequences of shard %d on %s: %w", shard, s.addr, err)
	}
	return present, nil
}

// Insert writes b into events_local as one block, column by column. ctx
// carries the query id (clickhouse.WithQueryID) and the deadline.
func (s *server) Insert(ctx context.Context, b *batch.Batch) (err error) {
	if err := s.EnsureSchema(ctx); err != nil {
		return err
	}
	defer func() { s.noteSchemaLoss(err) }()
	bt, err := s.conn.PrepareBatch(ctx, InsertQuery(s.database))
	if err != nil {
		return fmt.Errorf("prepare insert: %w", err)
	}
	// A batch that was not sent still holds its connection mid-query.
	defer func() {
		if !bt.IsSent() {
			_ = bt.Abort()
		}
	}()
	if err := AppendBatch(bt, b); err != nil {
		return err
	}
	if err := bt.Send(); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return nil
}

// AppendBatch appends the rows of b to bt column by column, in the order
// of Columns (the order of InsertQuery), as the sink inserts a batch.
func AppendBatch(bt driver.Batch, b *batch.Batch) error {
	shard := make([]uint16, b.Len())
	for i := range shard {
		shard[i] = uint16(b.Shard)
	}
	cols := []any{
		b.EventID, b.Tenant, b.UserID, b.Type,
		batch.Times(b.TS), batch.Times(b.ReceivedAt),
		b.Properties, shard, b.Seq,
	}
	for i, col := range cols {
		if err := bt.Column(i).Append(col); err != nil {
			return fmt.Errorf("append column %s: %w", Columns[i], err)
		}
	}
	return nil
}

// noteSchemaLoss clears schemaOK when err says the database or a table is
// missing (someone dropped them, or the server lost its data).
func (s *server) noteSchemaLoss(err error) {
	var ex *clickhouse.Exception
	if errors.As(err, &ex) && (ex.Code == 60 || ex.Code == 81) { // UNKNOWN_TABLE, UNKNOWN_DATABASE
		s.schemaOK.Store(false)
	}
}

// Close closes the connection pool.
func (s *server) Close() error { return s.conn.Close() }
