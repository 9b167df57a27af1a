package status

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/lease"
)

// leases reads every key of the lease bucket with its value; no bucket
// means no service runs in lease mode.
func (c *Collector) leases(ctx context.Context, st *jsState) error {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	kv, err := c.js.KeyValue(rctx, lease.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lease bucket %s: %w", lease.Bucket, err)
	}
	w, err := kv.WatchAll(rctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("lease bucket %s: %w", lease.Bucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil { // nil marks the end of the current values
				return nil
			}
			st.leases[e.Key()] = string(e.Value())
		case <-rctx.Done():
			return fmt.Errorf("lease bucket %s: %w", lease.Bucket, rctx.Err())
		}
	}
}

// owner names who works on shard k of svc.
func owner(mode map[string]string, leases map[string]string, metrics map[string]*instanceMetrics, svc string, k int) string {
	if mode[svc] == "unknown" {
		return "?"
	}
	if mode[svc] == "lease" {
		holder := leases[svc+".shard."+strconv.Itoa(k)]
		for name, m := range metrics {
			if holder != "" && m.service == svc && m.leaseID == holder {
				return name // the admin name of the process holding it
			}
		}
		return holder
	}
	var names []string
	asked := false
	for name, m := range metrics {
		if m.service != svc {
			continue
		}
		asked = true
		if m.shards[k] {
			names = append(names, name)
		}
	}
	if !asked {
		return "static"
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}
