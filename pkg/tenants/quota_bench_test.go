package tenants_test

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/tenants"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// BenchmarkQuotaTake is the cost per request of the quota as ingest
// applies it: each instance its share, in memory.
func BenchmarkQuotaTake(b *testing.B) {
	q := tenants.NewQuota(func(string) tenants.Limits { return tenants.Limits{EventsPerSecond: 1e12, BytesPerSecond: 1e15} },
		func() int { return 2 })
	names := make([]string, 100)
	for i := range names {
		names[i] = "tenant-" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if !q.Take(names[i%len(names)], 100, 20_000).Allowed {
			b.Fatal("refused")
		}
	}
}

// BenchmarkQuotaSharedBucket is the alternative measured against it: one
// bucket per tenant in a JetStream key-value store, taken by
// compare-and-swap, exact over any number of instances but a round trip
// (two, on a conflict) per request.
func BenchmarkQuotaSharedBucket(b *testing.B) {
	ns := natstest.Start(b)
	js := natstest.JetStream(b, ns.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "QUOTA_BENCH", Storage: jetstream.FileStorage})
	require.NoError(b, err)
	_, err = kv.Put(ctx, "t", binary.BigEndian.AppendUint64(nil, 1<<62))
	require.NoError(b, err)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for {
			e, err := kv.Get(ctx, "t")
			require.NoError(b, err)
			left := binary.BigEndian.Uint64(e.Value()) - 100
			_, err = kv.Update(ctx, "t", binary.BigEndian.AppendUint64(nil, left), e.Revision())
			if err == nil {
				break
			}
			var apiErr *jetstream.APIError
			if !errors.As(err, &apiErr) {
				b.Fatal(err)
			}
		}
	}
}
