package partitioner

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// TestProducerProblemsAreRecorded: a producer's invalid events and its
// unreadable message are its tenant's problems, counted exactly, each
// sample naming its event.
func TestProducerProblemsAreRecorded(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	mixed := strings.Join([]string{
		`{"event_id":"e1","user_id":"u1"}`,
		`{"user_id":"u2","type":"ok"}`,
		`{"event_id":"e3","user_id":"u3"}`,
		`{"event_id":"e4","user_id":"u4","type":"click","colour":"red"}`,
	}, "\n")
	for subject, body := range map[string]string{
		"surge.in.acme.web":   mixed,
		"surge.in.acme.other": "hello",
		"surge.in.globex":     `{"user_id":"g1"}`,
	} {
		_, err := js.Publish(t.Context(), subject, []byte(body))
		require.NoError(t, err)
	}
	p := start(t, testConfig(ns.ClientURL()))
	waitDrained(t, js)
	_, err := p.host.Problems.Flush(t.Context(), js)
	require.NoError(t, err)

	read := func(tenant string) map[string]int64 {
		aggs, _, err := problems.Read(t.Context(), js, problems.Query{Tenant: tenant, Since: time.Now().Add(-time.Hour)})
		require.NoError(t, err)
		counts := map[string]int64{}
		for _, a := range aggs {
			require.Equal(t, "partitioner", a.Service)
			counts[a.Reason+"/"+a.Field] += a.Count
			switch a.Reason {
			case problems.ReasonMissingField:
				if tenant == "acme" {
					require.Equal(t, "e1", a.Samples[0].ID)
					require.Equal(t, `{"event_id":"e1","user_id":"u1"}`, a.Samples[0].Excerpt)
				}
			case problems.ReasonMalformedMessage:
				require.Equal(t, "hello", a.Samples[0].Excerpt)
				require.Contains(t, a.Samples[0].Detail, "not JSON")
			}
		}
		return counts
	}
	require.Equal(t, map[string]int64{
		problems.ReasonMissingField + "/type":   2,
		problems.ReasonUnknownField + "/colour": 1,
		problems.ReasonMalformedMessage + "/":   1,
	}, read("acme"))
	require.Equal(t, map[string]int64{problems.ReasonMissingField + "/type": 1}, read("globex"))
}
