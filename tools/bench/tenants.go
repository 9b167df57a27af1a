package bench

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/surge-events/surge/pkg/tenants"
	"github.com/surge-events/surge/tools/stack"
)

// With --tenants N the load is spread over N tenants, request by request,
// each with its API key, on fresh stacks: quotas off (no limits
// anywhere), or on, every tenant under a quota far above what it sends
// (benchQuota), so each request goes through the quota's buckets and
// none is refused. The modes are printed side by side.

// benchQuota is the default quota of the quotas-on run: far above any
// tenant's share of the load.
var benchQuota = tenants.Limits{EventsPerSecond: 1e9, BytesPerSecond: 1e12}

// tenantKeys are the API keys of n bench tenants, key -> tenant.
func tenantKeys(n int) map[string]string {
	keys := make(map[string]string, n)
	for i := range n {
		keys[fmt.Sprintf("bench-key-%03d", i)] = fmt.Sprintf("bench-%03d", i)
	}
	return keys
}

// poster posts the load's requests, each with the next API key in turn
// (none when keys is empty).
type poster struct {
	keys []string
	next atomic.Uint64
}

func newPoster(keys map[string]string) *poster {
	p := &poster{}
	for k := range keys {
		p.keys = append(p.keys, k)
	}
	return p
}

func (p *poster) post(ctx context.Context, url string, body []byte) error {
	key := ""
	if len(p.keys) > 0 {
		key = p.keys[p.next.Add(1)%uint64(len(p.keys))]
	}
	return postKey(ctx, url+"/v1/events", key, http.StatusAccepted, body)
}

// applyQuotas sets the default quota in the stack's SURGE_TENANTS bucket
// and waits until ingest applies it (its answers carry RateLimit-Limit).
func applyQuotas(ctx context.Context, st *stack.Stack, key string) error {
	js, closeNATS, err := stackJetStream(st)
	if err != nil {
		return err
	}
	defer closeNATS()
	store, err := tenants.Open(ctx, js, 1)
	if err != nil {
		return err
	}
	if err := store.Set(ctx, "", benchQuota); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, st.IngestURL+"/v1/events", strings.NewReader(`{"type":"quota-probe","user_id":"bench"}`))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.Header.Get("RateLimit-Limit") != "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ingest did not apply the quota within 10 s (answer %s)", resp.Status)
		}
		time.Sleep(20 * time.Millisecond) // polling ingest's answers: it offers no wait
	}
}

// benchTenants runs the quotas-off and quotas-on stacks (offOn) and
// prints them side by side.
func benchTenants(ctx context.Context, f benchFlags, gen *generator) error {
	keys := tenantKeys(f.tenants)
	offs, ons, err := runOffOn(ctx, f, gen, offOn{name: "quotas", run: func(on bool) stackRun {
		return stackRun{apiKeys: keys, quotas: on}
	}})
	if err != nil {
		return err
	}
	fmt.Print(offOnReport(fmt.Sprintf("Surge bench, %d tenants, quotas off vs on (every tenant under a quota of %.0g events/s it never reaches; the same load in each: %d events, %d clients x %d events/request, one tenant per request in turn",
		f.tenants, benchQuota.EventsPerSecond, f.events/f.perRequest*f.perRequest, f.clients, f.perRequest), "quotas", offs, ons))
	return nil
}
