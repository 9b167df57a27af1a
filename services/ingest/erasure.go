package ingest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/problems"
)

// ErasurePath is the operators' erasure route: POST a request, GET the
// list, GET ErasurePath/<id> one request. It takes ingest.admin_key as a
// bearer token, never a tenant's key, and is off without one.
const ErasurePath = "/v1/admin/erasure"

// minAdminKey is the shortest admin key.
const minAdminKey = 16

// validateAdminKey refuses a short admin key or one that is also a
// tenant's API key.
func (c Settings) validateAdminKey() error {
	if c.AdminKey == "" {
		return nil
	}
	var errs []error
	if len(c.AdminKey) < minAdminKey {
		errs = append(errs, fmt.Errorf("admin_key must be at least %d characters", minAdminKey))
	}
	if _, ok := c.APIKeys[c.AdminKey]; ok {
		errs = append(errs, errors.New("admin_key is also a tenant's API key"))
	}
	return errors.Join(errs...)
}

// erasedUsers refuses the events of users an erasure request suppressed:
// the suppression list, kept in memory by a watcher, is read for each
// event of a tenant that has one (a map lookup for the others).
type erasedUsers struct {
	// w is set once NATS is connected; nil refuses nothing.
	w       atomic.Pointer[erasure.Watcher]
	dropped prometheus.Counter
}

// runErasure watches the suppression list until ctx ends; serve owns it.
func (s *Service) runErasure(ctx context.Context, wg *sync.WaitGroup) {
	conn := s.conn.Load()
	w := erasure.NewWatcher(conn.JS, s.cfg.Streams.Replicas, s.logger)
	if s.erased.dropped == nil {
		s.erased.dropped = promauto.With(s.host.Registry).NewCounter(prometheus.CounterOpts{
			Name: "surge_ingest_erased_events_dropped_total",
			Help: "Events of users suppressed by an erasure request, dropped at ingest.",
		})
	}
	s.erased.w.Store(w)
	// Not ready until the list was read once, as for the quotas: a load
	// balancer sends nothing the list would not see.
	s.host.Admin().NotReady(checkErasure, "reading the suppression list from "+erasure.Bucket)
	wg.Go(func() { w.Run(ctx) })
	wg.Go(func() {
		select {
		case <-w.Ready():
			s.host.Admin().Ready(checkErasure)
		case <-ctx.Done():
		}
	})
}

// checkErasure is the readiness check of the suppression list.
const checkErasure = "erasure"

// dropErased removes the events of suppressed users from a request of
// tenant, counts them and records them as the tenant's erased_user
// problem; the request's other events are stored as usual. An event of
// a suppressed user that passes here while the list is not yet read is
// dropped by the batcher.
func (s *Service) dropErased(tenant string, events []event.Event) []event.Event {
	w := s.erased.w.Load()
	if w == nil {
		return events
	}
	kept, n := w.Drop(events)
	if n > 0 {
		s.erased.dropped.Add(float64(n))
		s.host.Problems.AddN(tenant, problems.ReasonErasedUser, "user_id", n, problems.Sample{
			Detail: "the user's data was erased on request; new events of the user are dropped"})
	}
	return kept
}

// registerErasure serves ErasurePath.
func (s *Service) registerErasure() {
	s.mux.Handle(http.MethodPost+" "+ErasurePath, s.endpoint(ErasurePath, s.serveEraseRequest))
	s.mux.Handle(http.MethodGet+" "+ErasurePath, s.endpoint(ErasurePath, s.serveEraseList))
	s.mux.Handle(http.MethodGet+" "+ErasurePath+"/{id}", s.endpoint(ErasurePath, s.serveEraseList))
}

// eraseBody is the body of a POST to ErasurePath.
type eraseBody struct {
	Tenant string   `json:"tenant"`
	Users  []string `json:"users"`
	// Before, RFC 3339, erases only events whose ts is before it.
	Before string `json:"before,omitempty"`
}

// erasureAdmin checks the admin key and returns the erasure store.
func (s *Service) erasureAdmin(ctx context.Context, r *http.Request) (*erasure.Store, reply) {
	key := s.cfg.Ingest.AdminKey
	if key == "" {
		return nil, reject(http.StatusNotFound, reasonNotFound, "the erasure route is off: set ingest.admin_key")
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(key)) != 1 {
		return nil, reply{status: http.StatusUnauthorized, reason: reasonUnauthorized,
			message: "the erasure route takes ingest.admin_key as a bearer token", challenge: `Bearer realm="surge-admin"`}
	}
	conn := s.conn.Load()
	if conn == nil {
		return nil, reject(http.StatusServiceUnavailable, reasonUnavailable, "event store unavailable; retry later")
	}
	store, err := erasure.Open(ctx, conn.JS, s.cfg.Streams.Replicas)
	if err != nil {
		return nil, reject(http.StatusServiceUnavailable, reasonUnavailable, err.Error())
	}
	return store, reply{}
}

// serveEraseRequest takes an erasure request: the users are suppressed
// once it answers 202; the sink's eraser deletes their data.
func (s *Service) serveEraseRequest(ctx context.Context, _ http.ResponseWriter, r *http.Request) reply {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	store, rep := s.erasureAdmin(ctx, r)
	if rep.status != 0 {
		return rep
	}
	var body eraseBody
	if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 4<<20)).Decode(&body); err != nil {
		return reject(http.StatusBadRequest, reasonBadRequest, "body must be {\"tenant\":...,\"users\":[...],\"before\":RFC 3339}: "+err.Error())
	}
	sub := erasure.Submission{Tenant: body.Tenant, Users: body.Users}
	if body.Before != "" {
		t, err := time.Parse(time.RFC3339, body.Before)
		if err != nil {
			return reject(http.StatusBadRequest, reasonBadRequest, "before must be an RFC 3339 time: "+err.Error())
		}
		sub.Before = t
	}
	if err := sub.Validate(); err != nil {
		return reject(http.StatusBadRequest, reasonBadRequest, err.Error())
	}
	req, err := store.Submit(ctx, sub, time.Now())
	if err != nil && req == nil {
		return reject(http.StatusServiceUnavailable, reasonUnavailable, err.Error())
	}
	if err != nil {
		s.logger.Warn("erasure request recorded, suppression incomplete", zap.String("request", req.ID), zap.Error(err))
	}
	s.logger.Info("erasure requested", zap.String("request", req.ID), zap.String("tenant", req.Tenant), zap.Int("users", req.UserCount))
	req.Users = nil
	return reply{status: http.StatusAccepted, answer: req}
}

// serveEraseList answers every request, or the one named in the path,
// without the raw user ids.
func (s *Service) serveEraseList(ctx context.Context, _ http.ResponseWriter, r *http.Request) reply {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	store, rep := s.erasureAdmin(ctx, r)
	if rep.status != 0 {
		return rep
	}
	if id := r.PathValue("id"); id != "" {
		req, err := store.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return reject(http.StatusNotFound, reasonNotFound, "no erasure request "+id)
		}
		if err != nil {
			return reject(http.StatusServiceUnavailable, reasonUnavailable, err.Error())
		}
		req.Users = nil
		return reply{status: http.StatusOK, answer: req}
	}
	reqs, err := store.List(ctx)
	if err != nil {
		return reject(http.StatusServiceUnavailable, reasonUnavailable, err.Error())
	}
	for _, q := range reqs {
		q.Users = nil
	}
	return reply{status: http.StatusOK, answer: map[string]any{"requests": reqs}}
}
