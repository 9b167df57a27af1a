package erasure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/surge-events/surge/pkg/event"
)

func openBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Surge erasure: suppressed users and erasure requests",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("erasure bucket %s: %w", Bucket, err)
	}
	return kv, nil
}

// Store reads and writes the bucket: `surge erase`, ingest's erasure
// route and the runner use it.
type Store struct{ kv jetstream.KeyValue }

// Open opens the bucket, creating it with replicas when missing.
func Open(ctx context.Context, js jetstream.JetStream, replicas int) (*Store, error) {
	kv, err := openBucket(ctx, js, replicas)
	if err != nil {
		return nil, err
	}
	return &Store{kv: kv}, nil
}

// Submission is what an erasure request asks.
type Submission struct {
	Tenant string
	Users  []string
	// Before, when set, erases only events whose ts is before it.
	Before time.Time
}

// Validate reports every problem of the submission.
func (s Submission) Validate() error {
	var errs []error
	if !event.ValidTenant(s.Tenant) {
		errs = append(errs, fmt.Errorf("tenant %q: must be 1 to 64 letters, digits, '_' or '-'", s.Tenant))
	}
	switch n := len(s.Users); {
	case n == 0:
		errs = append(errs, errors.New("no user given"))
	case n > MaxUsers:
		errs = append(errs, fmt.Errorf("%d users; at most %d per request", n, MaxUsers))
	}
	if slices.Contains(s.Users, "") {
		errs = append(errs, errors.New("an empty user id"))
	}
	return errors.Join(errs...)
}

// Submit records a request and suppresses its users at once: from the
// moment Submit returns, the entry points refuse their new events (within
// the watch's delay, milliseconds). The runner does the rest.
func (s *Store) Submit(ctx context.Context, sub Submission, now time.Time) (*Request, error) {
	if err := sub.Validate(); err != nil {
		return nil, err
	}
	users := slices.Clone(sub.Users)
	slices.Sort(users)
	users = slices.Compact(users)
	r := &Request{
		ID:          "er-" + strings.ToLower(ulid.Make().String()),
		Tenant:      sub.Tenant,
		Users:       users,
		UserCount:   len(users),
		Before:      sub.Before.UTC(),
		RequestedAt: now.UTC(),
		State:       Requested,
	}
	if sub.Before.IsZero() {
		r.Before = time.Time{}
	}
	for _, u := range users {
		r.UserHashes = append(r.UserHashes, UserHash(r.Tenant, u))
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	rev, err := s.kv.Create(ctx, RequestKey(r.ID), b)
	if err != nil {
		return nil, fmt.Errorf("record erasure request: %w", err)
	}
	r.revision = rev
	if err := s.Suppress(ctx, r); err != nil {
		return r, fmt.Errorf("request %s recorded, suppression not yet complete (the eraser completes it): %w", r.ID, err)
	}
	return r, nil
}

// Suppress writes the suppression key of each user of r, unless one that
// refuses at least as much is there. It is idempotent.
func (s *Store) Suppress(ctx context.Context, r *Request) error {
	want := r.Suppression()
	val, err := json.Marshal(want)
	if err != nil {
		return err
	}
	for _, u := range r.Users {
		key := UserKey(r.Tenant, u)
		e, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("read suppression: %w", err)
		default:
			var old Suppression
			if json.Unmarshal(e.Value(), &old) == nil && !want.wider(old) {
				continue
			}
		}
		if _, err := s.kv.Put(ctx, key, val); err != nil {
			return fmt.Errorf("write suppression: %w", err)
		}
	}
	return nil
}

// Get reads request id.
func (s *Store) Get(ctx context.Context, id string) (*Request, error) {
	e, err := s.kv.Get(ctx, RequestKey(id))
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", id, err)
	}
	return decodeRequest(e)
}

func decodeRequest(e jetstream.KeyValueEntry) (*Request, error) {
	var r Request
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("request %s: %w", e.Key(), err)
	}
	r.revision = e.Revision()
	return &r, nil
}

// List reads every request, oldest first.
func (s *Store) List(ctx context.Context) ([]*Request, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, requestPrefix+">")
	if err != nil {
		return nil, fmt.Errorf("list requests: %w", err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	var out []*Request
	for _, k := range keys {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		r, err := decodeRequest(e)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *Request) int { return a.RequestedAt.Compare(b.RequestedAt) })
	return out, nil
}

// Pending reads the unfinished requests, oldest first.
func (s *Store) Pending(ctx context.Context) ([]*Request, error) {
	all, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, (*Request).Done), nil
}

// Save writes r at the revision it was read at, so two runners (a paused
// one that lost the lease) never overwrite each other's progress.
func (s *Store) Save(ctx context.Context, r *Request) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	rev, err := s.kv.Update(ctx, RequestKey(r.ID), b, r.revision)
	if err != nil {
		return fmt.Errorf("save request %s: %w", r.ID, err)
	}
	r.revision = rev
	return nil
}
