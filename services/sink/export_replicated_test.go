package sink

import "context"

// Store is a ClickHouse shard as a shard loop uses it, for the external
// tests to drive its failover and watermark directly.
type Store interface {
	store
	EnsureSchema(ctx context.Context) error
	Close() error
}

// OpenStore opens the shard of Addrs entry addr as the sink does.
func OpenStore(c ClickHouseConfig, addr string) (Store, error) { return openServer(c, addr) }
