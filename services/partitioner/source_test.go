package partitioner

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Every subject INGEST captures belongs to one tenant, whose consumer's
// filters cover it; a consumer name is valid whatever the subject token.
func TestTenantsOfSubjectsAndTheirConsumers(t *testing.T) {
	tests := []struct {
		subject, tenant, consumer string
	}{
		{"ingest.acme", "acme", "partitioner-acme"},
		{"ingest.acme.extra", "acme", "partitioner-acme"},
		{"surge.in.acme", "acme", "partitioner-acme"},
		{"surge.in.acme.web.v1", "acme", "partitioner-acme"},
		{"surge.in.Tenant_1-x.app", "Tenant_1-x", "partitioner-Tenant_1-x"},
		// A token that is no valid tenant (dead-lettered by the
		// partitioner) still has a consumer, under a hashed name.
		{"surge.in.a*b.x", "a*b", "partitioner-~"},
		{"ingest.é", "é", "partitioner-~"},
	}
	for _, tt := range tests {
		t.Run(tt.subject, func(t *testing.T) {
			tenant, ok := TenantOf(tt.subject)
			require.True(t, ok)
			require.Equal(t, tt.tenant, tenant)
			name := ConsumerName(tenant)
			require.True(t, strings.HasPrefix(name, tt.consumer), name)
			require.False(t, strings.ContainsAny(name, ".*> \t"), "%s: a valid consumer name", name)
			require.True(t, covers(FilterSubjects(tenant), tt.subject), "%s covers %s", FilterSubjects(tenant), tt.subject)
		})
	}
	for _, subject := range []string{"events.shard.1", "ingest.", "surge.in."} {
		_, ok := TenantOf(subject)
		require.False(t, ok, subject)
	}
	require.NotEqual(t, ConsumerName("a*b"), ConsumerName("a>b"))
	require.False(t, covers(FilterSubjects("acme"), "ingest.acme2"), "tenants' filters are disjoint")
	require.False(t, covers(FilterSubjects("acme"), "surge.in.acmex.y"))
}

// covers reports whether one of filters matches subject (NATS wildcards).
func covers(filters []string, subject string) bool {
	for _, f := range filters {
		ft, st := strings.Split(f, "."), strings.Split(subject, ".")
		match := true
		for i, tok := range ft {
			if tok == ">" {
				match = len(st) > i
				break
			}
			if i >= len(st) || (tok != "*" && tok != st[i]) {
				match = false
				break
			}
			if i == len(ft)-1 && len(st) != len(ft) {
				match = false
			}
		}
		if match {
			return true
		}
	}
	return false
}
