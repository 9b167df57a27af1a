package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/liveness"
	"github.com/surge-events/surge/pkg/problems"
	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/streams"
)

// DrainTimeout bounds the flush of a service's NATS connection at
// shutdown, after its body has returned.
const DrainTimeout = 10 * time.Second

// CheckNATS is the readiness check of the NATS connection: it fails while
// the connection is down and until the streams are ensured again after a
// reconnect (the server may be a new one without them).
const CheckNATS = "nats"

// Validate reports every dependency that is missing. A service is given
// all three; a nil one is a programming error reported at New, not a
// panic at the first log line.
func (d Deps) Validate() error {
	var errs []error
	if d.Logger == nil {
		errs = append(errs, errors.New("deps: logger is required"))
	}
	if d.Registry == nil {
		errs = append(errs, errors.New("deps: registry is required"))
	}
	if d.TracerProvider == nil {
		errs = append(errs, errors.New("deps: tracer provider is required"))
	}
	return errors.Join(errs...)
}

// Spec is what the lifecycle needs to know of a service.
type Spec struct {
	// Name is the service's short name ("batcher"): its NATS connection is
	// surge-<name> and its tracer github.com/surge-events/surge/services/<name>.
	Name string
	// Common holds the NATS, stream and admin settings the lifecycle uses.
	Common
	// JetStream are options of the JetStream context handed to the body.
	JetStream []jetstream.JetStreamOpt
	// Shards is the service's number of logical shards, checked against
	// the streams' at start (streams.CheckShards); 0 for a service that
	// does not shard (ingest).
	Shards int
}

// Conn is the NATS connection the lifecycle hands a service's body.
type Conn struct {
	NC *nats.Conn
	JS jetstream.JetStream
}

// Body is the work of a service between start-up and shutdown. It runs
// until ctx ends, finishes what it holds (final flushes, acks) and returns
// nil, or returns an error when it cannot go on. The NATS connection stays
// open until it returns.
type Body func(ctx context.Context, conn Conn) error

// Host runs a service's body inside the lifecycle every Surge service
// shares:
//
//  1. New validates the dependencies and opens the admin listener, so the
//     admin address is known before Run; it does no other I/O.
//  2. Run serves /healthz, /readyz and /metrics, connects to NATS (bounded
//     by nats.connect_timeout), ensures the streams, marks the service
//     ready and runs the body. A cancel before the body starts is a clean
//     stop, not an error.
//  3. While the body runs, readiness follows the NATS connection: not
//     ready while disconnected, ready again once the streams are ensured
//     on the (possibly new) server.
//  4. When ctx ends the service turns not ready at once; when the body
//     returns the connection drains (at most DrainTimeout) and the admin
//     server stops last, so /metrics answers while the last work drains.
//  5. /metrics carries surge_<name>_ready (1 while /readyz answers 200)
//     and, while connected, every stream's surge_stream_bytes,
//     surge_stream_max_bytes and surge_stream_messages, read every 5 s.
//  6. Problems, the service's problems.Recorder, publishes to PROBLEMS
//     every second while the body runs, and once more after it returns.
//
// Close is safe without Run, and after it (the collector's Start/Shutdown
// contract): it releases what New opened.
type Host struct {
	spec Spec
	// Logger, Registry and Tracer are the service's, from its Deps.
	Logger   *zap.Logger
	Registry *prometheus.Registry
	Tracer   trace.Tracer
	// Problems records the problems of tenants' events the service meets;
	// Run publishes them to PROBLEMS every second and once more after the
	// body returns, before the connection drains.
	Problems *problems.Recorder
	admin    *Admin
	streams  *streamGauges
	ran      atomic.Bool
	// reconnected wakes the readiness watcher. Size one: a pending signal
	// covers any number of reconnects.
	reconnected chan struct{}
}

// NewHost validates deps and opens the admin listener.
func NewHost(spec Spec, deps Deps) (*Host, error) {
	if err := deps.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Name, err)
	}
	admin, err := NewAdmin(spec.Admin.Addr, deps.Registry, deps.Logger)
	if err != nil {
		return nil, err
	}
	registerReady(deps.Registry, spec.Name, admin)
	rec, err := problems.NewRecorder(spec.Name, deps.Registry, problems.WithLogger(deps.Logger))
	if err != nil {
		_ = admin.Close()
		return nil, fmt.Errorf("%s: %w", spec.Name, err)
	}
	return &Host{
		Problems:    rec,
		spec:        spec,
		Logger:      deps.Logger,
		Registry:    deps.Registry,
		Tracer:      deps.TracerProvider.Tracer("github.com/surge-events/surge/services/" + spec.Name),
		admin:       admin,
		streams:     newStreamGauges(deps.Registry),
		reconnected: make(chan struct{}, 1),
	}, nil
}

// AdminAddr is the address of /healthz, /readyz and /metrics.
func (h *Host) AdminAddr() string { return h.admin.Addr() }

// Admin is the admin server, for a body's own readiness checks.
func (h *Host) Admin() *Admin { return h.admin }

// Watchdogs returns the watchdog factory of the service: a unit with work
// pending and no progress for timeout is stalled, counted, logged and
// shown on /readyz.
func (h *Host) Watchdogs(timeout time.Duration) *liveness.Watchdogs {
	return liveness.NewWatchdogs(h.spec.Name, timeout, h.admin, h.Logger, h.Registry)
}

// Close releases the admin listener of a host whose Run was never called.
func (h *Host) Close() error { return h.admin.Close() }

// Run runs the lifecycle around body until ctx ends and body returns. It
// returns nil on a clean shutdown. Run may be called once.
func (h *Host) Run(ctx context.Context, body Body) (err error) {
	if !h.ran.CompareAndSwap(false, true) {
		return fmt.Errorf("%s: Run called twice", h.spec.Name)
	}
	stopAdmin := h.admin.Start()
	defer func() {
		if aerr := stopAdmin(); aerr != nil && err == nil {
			err = aerr
		}
	}()

	conn, err := h.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			h.Logger.Info("stopped before start-up completed", zap.Error(err))
			return nil
		}
		return err
	}
	defer func() {
		if derr := DrainNATS(conn.NC, DrainTimeout); derr != nil {
			h.Logger.Warn("nats drain", zap.Error(derr))
		}
	}()

	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { h.watchReconnects(watchCtx, conn.JS) })
	wg.Go(func() { h.streams.poll(watchCtx, conn.JS, h.spec.Streams, h.Logger) })
	h.admin.Ready(CheckStarting)

	problemsCtx, stopProblems := context.WithCancel(context.WithoutCancel(ctx))
	wg.Go(func() { h.Problems.Run(problemsCtx, conn.JS) })

	err = body(ctx, conn)

	stopWatch()
	stopProblems() // after the body: its last problems are flushed
	wg.Wait()
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return nil // the body passed the shutdown on: a clean stop
	}
	return err
}

// start connects and ensures the streams.
func (h *Host) start(ctx context.Context) (Conn, error) {
	h.admin.NotReady(CheckNATS, "connecting")
	nc, err := ConnectNATS(ctx, h.spec.NATS, "surge-"+h.spec.Name, h.Logger,
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			h.admin.NotReady(CheckNATS, "disconnected")
			if err != nil { // nil when the connection is closed on purpose
				h.Logger.Warn("nats disconnected", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			h.Logger.Info("nats reconnected", zap.String("url", nc.ConnectedUrlRedacted()))
			select {
			case h.reconnected <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		return Conn{}, err
	}
	js, err := jetstream.New(nc, h.spec.JetStream...)
	if err != nil {
		nc.Close()
		return Conn{}, fmt.Errorf("jetstream: %w", err)
	}
	// A fresh cluster may not have elected its meta leader yet: retry the
	// stream set-up as long as the connection itself may take.
	ectx, cancel := context.WithTimeout(ctx, h.spec.NATS.ConnectTimeout)
	defer cancel()
	if err := h.ensureStreams(ectx, js); err != nil {
		nc.Close()
		return Conn{}, err
	}
	h.admin.Ready(CheckNATS)
	return Conn{NC: nc, JS: js}, nil
}

// ensureStreams creates or updates the streams, retrying until ctx ends.
func (h *Host) ensureStreams(ctx context.Context, js jetstream.JetStream) error {
	return retry.Do(ctx, ensureRetry, func() error {
		actx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
		defer cancel()
		if err := streams.Ensure(actx, js, h.spec.Streams); err != nil {
			return err
		}
		if h.spec.Shards == 0 {
			return nil
		}
		err := streams.CheckShards(actx, js, h.spec.Shards)
		if errors.Is(err, streams.ErrShardsMismatch) {
			return retry.Permanent(err)
		}
		return err
	}, func(attempt int, err error, wait time.Duration) {
		h.Logger.Warn("ensure streams, retrying", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
	})
}

// ensureRetry paces the stream set-up; ensureAttemptTimeout bounds one try
// (a request lost in a NATS restart is retried after seconds, not tens).
var ensureRetry = retry.Config{Initial: 250 * time.Millisecond, Max: 5 * time.Second, Multiplier: 2, RandomizationFactor: 0.2}

const ensureAttemptTimeout = 3 * time.Second

// watchReconnects ensures the streams again after every reconnect before
// the service is called ready again. When ctx ends (shutdown, or the body
// returned) the service turns not ready at once, so no new traffic is sent
// to it while it drains.
func (h *Host) watchReconnects(ctx context.Context, js jetstream.JetStream) {
	for {
		select {
		case <-ctx.Done():
			h.admin.NotReady(CheckStarting, "stopping")
			return
		case <-h.reconnected:
		}
		h.admin.NotReady(CheckNATS, "reconnected, ensuring streams")
		if err := h.ensureStreams(ctx, js); err != nil {
			return // ctx ended
		}
		h.admin.Ready(CheckNATS)
	}
}
