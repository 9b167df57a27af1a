package tenants

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/event"
)

// Bucket is the key-value bucket of tenant settings: the key
// limits.<tenant> holds a tenant's Limits as JSON, DefaultKey those of
// every tenant without a key of its own (a key no tenant name can take).
const Bucket = "SURGE_TENANTS"

// DefaultKey holds the default limits.
const DefaultKey = "default"

// Key is the key of tenant's limits; tenant "" is the default's.
func Key(tenant string) string {
	if tenant == "" {
		return DefaultKey
	}
	return "limits." + tenant
}

// tenantOf is the tenant of a key ("" for the default), and whether the
// key is a tenant's limits at all.
func tenantOf(key string) (string, bool) {
	if key == DefaultKey {
		return "", true
	}
	t, ok := strings.CutPrefix(key, "limits.")
	return t, ok && event.ValidTenant(t)
}

// Store reads and writes the tenant settings: `surge tenants` and the
// tests use it; services watch the bucket with a Watcher.
type Store struct{ kv jetstream.KeyValue }

// Open opens the bucket, creating it with replicas when missing.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	kv, err := openBucket(ctx, js, replicas)
	if err != nil {
		return nil, err
	}
	return &Store{kv: kv}, nil
}

func openBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Surge tenant settings: quotas",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("tenant bucket %s: %w", Bucket, err)
	}
	return kv, nil
}

// Set writes tenant's limits ("" for the default).
func (s *Store) Set(ctx context.Context, tenant string, l Limits) error {
	if tenant != "" && !event.ValidTenant(tenant) {
		return fmt.Errorf("tenant %q: must be 1 to 64 letters, digits, '_' or '-'", tenant)
	}
	if err := l.Validate(); err != nil {
		return fmt.Errorf("limits of %q: %w", tenant, err)
	}
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, Key(tenant), b); err != nil {
		return fmt.Errorf("set limits of %q: %w", tenant, err)
	}
	return nil
}

// Unset removes tenant's own limits, so the default applies to it again.
func (s *Store) Unset(ctx context.Context, tenant string) error {
	if err := s.kv.Delete(ctx, Key(tenant)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("unset limits of %q: %w", tenant, err)
	}
	return nil
}

// Entry is one tenant's limits as stored; Tenant "" is the default.
type Entry struct {
	Tenant string
	Limits Limits
}

// List returns every stored entry, the default first, then by tenant.
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var out []Entry
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Tenant, b.Tenant) })
				return out, nil
			}
			if t, ok := tenantOf(e.Key()); ok {
				var l Limits
				if err := json.Unmarshal(e.Value(), &l); err != nil {
					return nil, fmt.Errorf("limits of %q: %w", t, err)
				}
				out = append(out, Entry{Tenant: t, Limits: l})
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("list tenants: %w", ctx.Err())
		}
	}
}
