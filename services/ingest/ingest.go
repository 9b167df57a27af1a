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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/pkg/streams"
)

const tracerName = "github.com/surge-events/surge/services/ingest"

// Service is the ingest service: an HTTP server in front of JetStream.
type Service struct {
	cfg     Config
	logger  *zap.Logger
	tracer  trace.Tracer
	metrics *metrics

	ln    net.Listener
	srv   *http.Server
	admin *service.Admin

	parser event.Parser
	// tenants maps sha256(API key) to tenant: looking up a digest rather
	// than the key keeps the lookup's timing independent of the key.
	tenants map[[sha256.Size]byte]string
	// slots is the in-flight semaphore: a request takes a slot or is
	// rejected at once, so load beyond MaxInFlight never queues.
	slots chan struct{}
	// gzipReaders reuses decompressors across requests.
	gzipReaders sync.Pool

	// conn is set once Run has connected NATS; nil before.
	conn atomic.Pointer[natsConn]
	// reconnected signals Run to ensure the streams again. Size one: a
	// pending signal covers any number of reconnects.
	reconnected chan struct{}
}

type natsConn struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// New builds the service and opens its listeners, so Addr and AdminAddr
// are known; it does no network I/O beyond listening. Run serves.
func New(cfg Config, deps service.Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ingest config: %w", err)
	}
	logger := deps.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	tp := deps.TracerProvider
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	if deps.Registry == nil {
		return nil, errors.New("ingest: deps.Registry is required")
	}
	s := &Service{
		cfg:     cfg,
		logger:  logger,
		tracer:  tp.Tracer(tracerName),
		metrics: newMetrics(deps.Registry),
		parser: event.Parser{Limits: event.Limits{
			MaxEvents:     cfg.Ingest.MaxEvents,
			MaxEventBytes: cfg.Ingest.MaxEventBytes,
		}},
		tenants:     make(map[[sha256.Size]byte]string, len(cfg.Ingest.APIKeys)),
		slots:       make(chan struct{}, cfg.Ingest.MaxInFlight),
		reconnected: make(chan struct{}, 1),
	}
	for key, tenant := range cfg.Ingest.APIKeys {
		s.tenants[sha256.Sum256([]byte(key))] = tenant
	}

	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return nil, fmt.Errorf("ingest listen: %w", err)
	}
	admin, err := service.NewAdmin(cfg.Admin.Addr, deps.Registry, logger)
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	s.ln, s.admin = ln, admin
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		WriteTimeout:      cfg.HTTP.WriteTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(logger.Named("http")),
	}
	return s, nil
}

// Addr is the address of the event API.
func (s *Service) Addr() string { return s.ln.Addr().String() }

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (s *Service) AdminAddr() string { return s.admin.Addr() }

// Run connects NATS, ensures the streams, serves until ctx ends, then shuts
// down in order: stop taking requests and let in-flight ones finish their
// publish, drain NATS, stop the admin server. It returns nil on a clean
// shutdown.
func (s *Service) Run(ctx context.Context) (err error) {
	stopAdmin := s.admin.Start()
	defer func() {
		if aerr := stopAdmin(); aerr != nil && err == nil {
			err = aerr
		}
	}()

	nc, js, err := service.ConnectNATS(ctx, s.cfg.NATS, "surge-ingest", s.logger)
	if err != nil {
		_ = s.ln.Close()
		return err
	}
	// These replace ConnectNATS's handlers, so they log as well.
	nc.SetDisconnectErrHandler(func(_ *nats.Conn, err error) {
		s.admin.SetReady(false)
		if err != nil { // nil when the connection is closed on purpose
			s.logger.Warn("nats disconnected", zap.Error(err))
		}
	})
	nc.SetReconnectHandler(func(nc *nats.Conn) {
		s.logger.Info("nats reconnected", zap.String("url", nc.ConnectedUrlRedacted()))
		select {
		case s.reconnected <- struct{}{}:
		default:
		}
	})
	defer func() {
		if derr := service.DrainNATS(nc, s.cfg.HTTP.ShutdownTimeout); derr != nil && err == nil {
			err = derr
		}
	}()

	if err := s.ensureStreams(ctx, js); err != nil {
		_ = s.ln.Close()
		return err
	}
	s.conn.Store(&natsConn{nc: nc, js: js})
	s.admin.SetReady(nc.IsConnected())

	serveDone := make(chan error, 1)
	go func() { serveDone <- s.srv.Serve(s.ln) }()
	s.logger.Info("serving", zap.String("addr", s.Addr()), zap.String("admin_addr", s.AdminAddr()))

	retry := time.NewTimer(0)
	if !retry.Stop() {
		<-retry.C
	}
	defer retry.Stop()
	for {
		select {
		case err := <-serveDone:
			s.admin.SetReady(false)
			return fmt.Errorf("ingest serve: %w", err)
		case <-s.reconnected:
		case <-retry.C:
		case <-ctx.Done():
			return s.shutdown(serveDone)
		}
		// After a reconnect the server may be a new one without our
		// streams: ensure them before calling the service ready again.
		if err := s.ensureStreams(ctx, js); err != nil {
			s.logger.Warn("ensure streams after reconnect", zap.Error(err))
			retry.Reset(time.Second)
			continue
		}
		s.admin.SetReady(nc.IsConnected())
	}
}

func (s *Service) ensureStreams(ctx context.Context, js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return streams.Ensure(ctx, js, s.cfg.Streams)
}

// shutdown stops taking requests and waits, up to ShutdownTimeout, for
// those in flight to be answered.
func (s *Service) shutdown(serveDone <-chan error) error {
	s.admin.SetReady(false)
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
