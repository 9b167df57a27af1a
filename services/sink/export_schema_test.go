package sink

import "time"

// ReconcileEvery has the sink reconcile the schema with its servers every
// d instead of every minute.
func (s *Service) ReconcileEvery(d time.Duration) { s.reconcileEvery = d }
