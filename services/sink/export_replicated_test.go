package sink

import "context"

// Store is a ClickHouse shard as a shard loop uses it, for the external
// tests to drive its failover and watermark directly.
type Store interface {
	store
	EnsureSchema(ctx context.Context) error
	// ForgetSchema makes the store look the schema up again on every
	// replica, over the connections it holds, as after a lost table.
	ForgetSchema()
	Close() error
}

// OpenStore opens the shard of Addrs entry addr as the sink does.
func OpenStore(c ClickHouseConfig, addr string) (Store, error) { return openServer(c, addr) }

func (s *server) ForgetSchema() {
	for _, r := range s.replicas {
		r.schemaOK.Store(false)
	}
}
