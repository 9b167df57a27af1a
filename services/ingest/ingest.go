// Package ingest is Surge's front door: it authenticates HTTP requests of
// events, validates them, publishes each request as one JetStream message to
// the INGEST stream and answers 202 only once JetStream has acknowledged it.
package ingest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/lease"
	"github.com/surge-events/surge/pkg/service"
)

// Service is the ingest service: an HTTP server in front of JetStream.
type Service struct {
	cfg     Config
	host    *service.Host
	logger  *zap.Logger
	tracer  trace.Tracer
	metrics *metrics

	ln  net.Listener
	srv *http.Server
	// mux routes each protocol's paths (routes).
	mux *http.ServeMux

	parser event.Parser
	// tenants maps sha256(API key) to tenant: looking up a digest rather
	// than the key keeps the lookup's timing independent of the key.
	tenants map[[sha256.Size]byte]string
	// slots is the in-flight semaphore: a request takes a slot or is
	// rejected at once, so load beyond MaxInFlight never queues.
	slots chan struct{}
	// gzipReaders reuses decompressors across requests.
	gzipReaders sync.Pool

	// conn is set once the lifecycle has connected NATS; nil before.
	conn atomic.Pointer[service.Conn]

	// instance names this process among the live ingest instances;
	// quotas applies each tenant's share of its limits.
	instance string
	quotas   *quotas
	// perTenant bounds each tenant's share of the in-flight slots.
	perTenant *tenantSlots
	// erased refuses the events of erased users (erasure.go).
	erased erasedUsers
}

// New builds the service and opens its listeners, so Addr and AdminAddr
// are known; it does no network I/O beyond listening. Run serves.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ingest config: %w", err)
	}
	host, err := service.NewHost(service.Spec{
		Name:   "ingest",
		Common: cfg.Common,
	}, deps)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		_ = host.Close()
		return nil, fmt.Errorf("ingest listen: %w", err)
	}
	s := &Service{
		cfg:     cfg,
		host:    host,
		logger:  host.Logger,
		tracer:  host.Tracer,
		metrics: newMetrics(host.Registry),
		ln:      ln,
		parser: event.Parser{Limits: event.Limits{
			MaxEvents:     cfg.Ingest.MaxEvents,
			MaxEventBytes: cfg.Ingest.MaxEventBytes,
		}},
		tenants: make(map[[sha256.Size]byte]string, len(cfg.Ingest.APIKeys)),
		slots:   make(chan struct{}, cfg.Ingest.MaxInFlight),
		mux:     http.NewServeMux(),

		instance: lease.NewInstanceID(),
	}
	s.quotas = s.newQuotas()
	s.perTenant = &tenantSlots{limit: cfg.Ingest.MaxInFlightPerTenant, held: map[string]int{}}
	s.routes()
	for key, tenant := range cfg.Ingest.APIKeys {
		s.tenants[sha256.Sum256([]byte(key))] = tenant
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		WriteTimeout:      cfg.HTTP.WriteTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(s.logger.Named("http")),
	}
	return s, nil
}

// Addr is the address of the event API.
func (s *Service) Addr() string { return s.ln.Addr().String() }

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.host.AdminAddr() }

// Run serves the event API once NATS is connected and the streams exist,
// until ctx ends; then it stops taking requests, lets those in flight
// finish their publish, and the lifecycle drains NATS and stops the admin
// server. It returns nil on a clean shutdown.
func (s *Service) Run(ctx context.Context) error {
	served := false
	err := s.host.Run(ctx, func(ctx context.Context, conn service.Conn) error {
		served = true
		return s.serve(ctx, conn)
	})
	if !served {
		// Start-up failed or was cancelled: nothing will serve the listener.
		if cerr := s.ln.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("ingest close listener: %w", cerr)
		}
	}
	return err
}

// serve is the body of the lifecycle: it answers HTTP until ctx ends.
func (s *Service) serve(ctx context.Context, conn service.Conn) error {
	s.conn.Store(&conn)
	var wg sync.WaitGroup
	defer wg.Wait() // after shutdown: no request applies the quotas any more
	qctx, stopQuotas := context.WithCancel(ctx)
	defer stopQuotas()
	s.runQuotas(qctx, &wg)
	s.runErasure(qctx, &wg)
	serveDone := make(chan error, 1)
	go func() { serveDone <- s.srv.Serve(s.ln) }()
	s.logger.Info("serving", zap.String("addr", s.Addr()), zap.String("admin_addr", s.AdminAddr()))
	select {
	case err := <-serveDone:
		return fmt.Errorf("ingest serve: %w", err)
	case <-ctx.Done():
		return s.shutdown(serveDone)
	}
}

// shutdown stops taking requests and waits, up to ShutdownTimeout, for
// those in flight to be answered.
func (s *Service) shutdown(serveDone <-chan error) error {
	// Not ready from now on, so a load balancer stops sending requests
	// while those in flight finish.
	s.host.Admin().NotReady(service.CheckStarting, "stopping")
	s.logger.Info("shutting down")
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.HTTP.ShutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serr := <-serveDone; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("ingest shutdown: %w", err)
	}
	return nil
}
