package bench

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/schema"
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
	nc, err := nats.Connect(st.NATS.ClientURL(), nats.UserInfo(st.NATSAuth.User, st.NATSAuth.Password))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
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

// benchTenants runs the quotas-off and quotas-on stacks in the order off,
// on, on, off (a stack runs slower after another on this machine; the
// ABBA order cancels it, see dedup.go) and prints each mode's two runs
// averaged, side by side.
func benchTenants(ctx context.Context, f benchFlags, gen *generator) error {
	keys := tenantKeys(f.tenants)
	runs := map[bool][]benchReport{}
	for i, on := range []bool{false, true, true, false} {
		label := fmt.Sprintf("%s-%d", map[bool]string{false: "quotas-off", true: "quotas-on"}[on], i+1)
		r, err := benchStack(ctx, f, gen, stackRun{
			dir: filepath.Join(f.dir, label), fresh: true, apiKeys: keys, quotas: on,
			report: modeDir(f.report, schema.Mode(label)), cpuProfile: modeFile(f.cpuProfile, schema.Mode(label)), memProfile: modeFile(f.memProfile, schema.Mode(label)),
		})
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		runs[on] = append(runs[on], r)
	}
	fmt.Print(tenantsReport(f, runs[false], runs[true]))
	return nil
}

func tenantsReport(f benchFlags, offs, ons []benchReport) string {
	off, on := mean(offs), mean(ons)
	var b strings.Builder
	fmt.Fprintf(&b, "\nSurge bench, %d tenants, quotas off vs on (every tenant under a quota of %.0g events/s it never reaches; the same load in each: %d events, %d clients x %d events/request, one tenant per request in turn; stacks run off, on, on, off, each mode's two averaged)\n",
		f.tenants, benchQuota.EventsPerSecond, f.events/f.perRequest*f.perRequest, f.clients, f.perRequest)
	for i, r := range []benchReport{offs[0], ons[0], ons[1], offs[1]} {
		fmt.Fprintf(&b, "  run %d %-10s inserted %.0f events/s, accepted %.0f events/s\n", i+1, map[bool]string{false: "quotas off", true: "quotas on"}[i == 1 || i == 2], r.tp.inserted, r.tp.accepted)
	}
	row := func(label, a, c, ratio string) { fmt.Fprintf(&b, "  %-26s %20s %20s %10s\n", label, a, c, ratio) }
	ratio := func(a, c float64) string {
		if a == 0 {
			return "-"
		}
		return fmt.Sprintf("%.3f", c/a)
	}
	row("", "quotas off", "quotas on", "on/off")
	row("accepted (HTTP 202)", fmt.Sprintf("%.0f events/s", off.tp.accepted), fmt.Sprintf("%.0f events/s", on.tp.accepted), ratio(off.tp.accepted, on.tp.accepted))
	row("inserted (queryable)", fmt.Sprintf("%.0f events/s", off.tp.inserted), fmt.Sprintf("%.0f events/s", on.tp.inserted), ratio(off.tp.inserted, on.tp.inserted))
	row("p99 ingest-to-queryable", off.lat.p99.String(), on.lat.p99.String(), ratio(off.lat.p99.Seconds(), on.lat.p99.Seconds()))
	return b.String()
}
