package sink

import "github.com/prometheus/client_golang/prometheus"

// Series are the metric series of one shard of a sink, for the external
// tests to read with prometheus/testutil.
type Series struct {
	// Inserted, Duplicates and DeadLettered are surge_sink_batches_total
	// by outcome.
	Inserted, Duplicates, DeadLettered    prometheus.Counter
	Rows, Retries, DeadLetters            prometheus.Counter
	Watermark                             prometheus.Gauge
	InsertDuration, BatchRows, BatchBytes prometheus.Observer
}

// Series are shard k's series of s, as its shard loop looks them up.
func (s *Service) Series(k int) Series {
	sm := s.metrics.forShard(k)
	return Series{
		Inserted: sm.inserted, Duplicates: sm.duplicates, DeadLettered: sm.deadLettered,
		Rows: sm.rows, Retries: sm.retries, DeadLetters: sm.deadLetters,
		Watermark:      sm.watermark,
		InsertDuration: sm.insertDuration, BatchRows: sm.batchRows, BatchBytes: sm.batchBytes,
	}
}

// EndToEnd is surge_sink_end_to_end_seconds of s.
func (s *Service) EndToEnd() prometheus.Histogram { return s.metrics.endToEnd }

// TurnWait is the histogram of the waits for a turn to insert on server
// addr (surge_sink_insert_turn_wait_seconds).
func (s *Service) TurnWait(addr string) prometheus.Observer {
	return s.metrics.turnWait.WithLabelValues(addr)
}

// UseRegistry has s's column DDL ask f what the schema registry knows of
// a typed column, as the service will once it reads the registry; call it
// before Run.
func (s *Service) UseRegistry(f RegistryColumn) { s.registryColumn = f }

// OpenStores opens every shard of c.Addrs as the sink does: one store a
// shard, sharing the column DDL (a column added on one shard reaches every
// shard's tables), with the DDL metrics in reg.
func OpenStores(c ClickHouseConfig, reg prometheus.Registerer) ([]Store, error) {
	var servers []*server
	for _, addr := range c.Addrs {
		s, err := openServer(c, addr)
		if err != nil {
			for _, s := range servers {
				_ = s.Close()
			}
			return nil, err
		}
		servers = append(servers, s)
	}
	shareKeeper(c, servers, nil, newMetrics(reg), nil)
	out := make([]Store, len(servers))
	for i, s := range servers {
		out[i] = s
	}
	return out, nil
}
