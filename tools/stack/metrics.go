package stack

import "github.com/prometheus/client_golang/prometheus"

// Sum adds every series of the named counter or gauge in reg; 0 when absent.
func Sum(reg prometheus.Gatherer, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Untyped != nil:
				total += m.Untyped.GetValue()
			}
		}
	}
	return total
}

// Accepted is the number of events ingest answered 202 for.
func (s *Stack) Accepted() float64 {
	if p := s.Part("ingest"); p != nil {
		return Sum(p.Registry, "surge_ingest_events_accepted_total")
	}
	return 0
}

// Inserted is the number of rows the sink inserted.
func (s *Stack) Inserted() float64 {
	if p := s.Part("sink"); p != nil {
		return Sum(p.Registry, "surge_sink_rows_inserted_total")
	}
	return 0
}
