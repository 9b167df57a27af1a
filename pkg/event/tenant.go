package event

import "regexp"

// tenantPattern is what a tenant name may look like: it becomes a NATS
// subject token and a ClickHouse value.
var tenantPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidTenant reports whether s may name a tenant: 1 to 64 letters,
// digits, '_' or '-'.
func ValidTenant(s string) bool { return tenantPattern.MatchString(s) }
