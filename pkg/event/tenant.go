package event

// ValidTenant reports whether s may name a tenant: 1 to 64 letters,
// digits, '_' or '-'. It becomes a NATS subject token and a ClickHouse
// value. A loop, not a regular expression: the batcher checks a tenant
// for every path of a key explosion, thousands a batch.
func ValidTenant(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
