package sink

// Instance is the id s leases shards under.
func (s *Service) Instance() string { return s.instance }
