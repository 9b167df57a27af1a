package stack

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Sum adds every series of the named counter or gauge in reg; 0 when absent.
func Sum(reg prometheus.Gatherer, name string) float64 { return SumWhere(reg, name, "", "") }

// SumWhere is Sum over the series whose label is value; every series
// when label is "".
func SumWhere(reg prometheus.Gatherer, name, label, value string) float64 {
	series, err := Series(reg, name)
	if err != nil {
		return 0
	}
	var total float64
	for _, m := range series {
		if label != "" && !hasLabel(m.GetLabel(), label, value) {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Untyped != nil:
			total += m.Untyped.GetValue()
		}
	}
	return total
}

// Series is every series of the named metric in reg; none when absent.
func Series(reg prometheus.Gatherer, name string) ([]*dto.Metric, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return nil, fmt.Errorf("gather %s: %w", name, err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric(), nil
		}
	}
	return nil, nil
}

func hasLabel(labels []*dto.LabelPair, name, value string) bool {
	for _, l := range labels {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

// The counters Accepted and Inserted read, which StopPart keeps for them.
const (
	acceptedCounter = "surge_ingest_events_accepted_total"
	insertedCounter = "surge_sink_rows_inserted_total"
)

var countersKept = []string{acceptedCounter, insertedCounter}

// Accepted is the number of events ingest answered 202 for, stopped
// instances included.
func (s *Stack) Accepted() float64 { return s.counted("ingest", acceptedCounter) }

// Inserted is the number of rows the sink inserted, stopped instances
// included.
func (s *Stack) Inserted() float64 { return s.counted("sink", insertedCounter) }

// counted is name in the running part's registry plus what its stopped
// instances counted.
func (s *Stack) counted(part, name string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.retired[name]
	for _, p := range s.Parts {
		if p.Name == part {
			n += Sum(p.Registry, name)
		}
	}
	return n
}
