package sdk

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/tenants"
	"github.com/surge-events/surge/services/ingest"
)

// testQuota sends a burst of a tenant whose quota is far below it: the
// SDK is answered 429 with Retry-After, waits, and in the end every
// message lands once.
func testQuota(t *testing.T, p *pipeline, sdk string) {
	tenant := sdk + "-quota"
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := tenants.Open(ctx, p.js, 1)
	require.NoError(t, err)
	// Two ingest instances live (the stack's and this one): each applies
	// half, 500 events/s with a burst of 500.
	require.NoError(t, st.Set(ctx, tenant, tenants.Limits{EventsPerSecond: 1000, Burst: 1000}))
	// Ready once it has read the limits.
	svc, reg := p.startIngest(t, func(*ingest.Config) {})

	msgs, ids := burst(sdk, "quota", 2000)
	o := send(t, job{SDK: sdk, Host: "http://" + svc.Addr(), WriteKey: writeKey(tenant), Messages: msgs, FlushAt: flushAt[sdk]})
	require.Equal(t, outcome{Delivered: len(ids), Errors: []string{}}, o)
	refused := answered(t, reg, "429")
	t.Logf("%s: %.0f requests answered 429 for the quota", sdk, refused)
	require.Positive(t, refused, "the burst is four times the quota's")
	byQuota, err := metric(reg, "surge_ingest_quota_refused_total", map[string]string{"tenant": tenant, "reason": "events"})
	require.NoError(t, err)
	require.Equal(t, refused, byQuota, "every 429 was the quota's")

	rows := p.rows(t, tenant)
	require.ElementsMatch(t, ids, keys(rows))
}
