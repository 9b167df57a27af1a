package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/retry"
)

// NATSConfig says how to reach NATS.
type NATSConfig struct {
	// URL is one or more comma-separated server URLs.
	URL string `yaml:"url" env:"URL"`
	// ConnectTimeout bounds the wait for NATS at start-up.
	ConnectTimeout time.Duration `yaml:"connect_timeout" env:"CONNECT_TIMEOUT"`
	// User and Password authenticate, when the server asks.
	User     string `yaml:"user" env:"USER"`
	Password string `yaml:"password" env:"PASSWORD"`
}

// DefaultNATSConfig points at a local server.
func DefaultNATSConfig() NATSConfig {
	return NATSConfig{URL: nats.DefaultURL, ConnectTimeout: 30 * time.Second}
}

// Validate reports every problem of the NATS settings.
func (c NATSConfig) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("url is required"))
	}
	if c.ConnectTimeout <= 0 {
		errs = append(errs, fmt.Errorf("connect_timeout must be positive, got %s", c.ConnectTimeout))
	}
	return errors.Join(errs...)
}

// ConnectNATS connects, retrying until ConnectTimeout, and reconnects
// forever afterwards: a NATS restart pauses a service, it does not end it.
// Options in extra come last, so their handlers replace the logging ones.
func ConnectNATS(ctx context.Context, c NATSConfig, name string, logger *zap.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(-1), // fail publishes while disconnected rather than buffer them unacknowledged
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil when the connection is closed on purpose
				logger.Warn("nats disconnected", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", zap.String("url", nc.ConnectedUrlRedacted()))
		}),
	}
	if c.User != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	opts = append(opts, extra...)
	cctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	var nc *nats.Conn
	err := retry.Do(cctx, connectRetry, func() error {
		var err error
		nc, err = nats.Connect(c.URL, opts...)
		return err
	}, func(_ int, err error, _ time.Duration) {
		logger.Info("waiting for nats", zap.String("url", c.URL), zap.Error(err))
	})
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", c.URL, err)
	}
	return nc, nil
}

// connectRetry paces the attempts to reach NATS at start-up.
var connectRetry = retry.Config{Initial: 250 * time.Millisecond, Max: 2 * time.Second, Multiplier: 2, RandomizationFactor: 0.2}

// DrainNATS flushes what nc has buffered (publishes, acks) and closes it,
// waiting at most timeout before closing it outright. A connection that is
// already closed or cannot drain while reconnecting is closed: nothing that
// was promised waits on it.
func DrainNATS(nc *nats.Conn, timeout time.Duration) error {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if nc.IsClosed() {
		return nil
	}
	if err := nc.Drain(); err != nil {
		nc.Close()
		if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionReconnecting) {
			return nil
		}
		return fmt.Errorf("drain nats: %w", err)
	}
	select {
	case <-closed:
		return nil
	case <-time.After(timeout):
		nc.Close()
		return fmt.Errorf("drain nats: not done after %s, closed", timeout)
	}
}
