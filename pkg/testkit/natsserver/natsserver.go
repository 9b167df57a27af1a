// Package natsserver runs an embedded NATS server with JetStream, for the
// local stack and for tests.
package natsserver

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
)

// Options configure an embedded server.
type Options struct {
	// Host and Port to listen on; Port -1 picks a free port.
	Host string
	Port int
	// StoreDir holds JetStream's files.
	StoreDir string
	// MaxPayload is the largest message; it must fit a batch.
	MaxPayload int32
	// Users turn authentication on: when set, every client must log in as
	// one of them. When empty, anyone may connect and do anything.
	Users []User
	// MQTTPort opens nats-server's MQTT listener on Host: 0 leaves it off,
	// -1 picks a free port (read it back with MQTTPort).
	MQTTPort int
	// Sync is when JetStream flushes its files to disk; SyncInterval when
	// empty.
	Sync Sync
}

// Sync is when JetStream makes what it stored durable on disk (fsync).
type Sync string

const (
	// SyncInterval writes to the page cache and flushes every
	// DefaultSyncInterval (nats-server's default): a PubAck survives a
	// crash of the process, not a power cut or kernel crash of the machine
	// in the seconds before the next flush.
	SyncInterval Sync = "interval"
	// SyncAlways flushes every write before the PubAck (nats-server's
	// sync_interval: always): a PubAck survives a power cut too, at the
	// cost of an fsync per write.
	SyncAlways Sync = "always"
)

// DefaultSyncInterval is how often JetStream flushes under SyncInterval.
const DefaultSyncInterval = 2 * time.Minute

// ParseSync reads a Sync from "always" or "interval"; "" is SyncInterval.
func ParseSync(s string) (Sync, error) {
	switch Sync(s) {
	case "", SyncInterval:
		return SyncInterval, nil
	case SyncAlways:
		return SyncAlways, nil
	}
	return "", fmt.Errorf("nats sync must be %q or %q, got %q", SyncAlways, SyncInterval, s)
}

// SyncOf is the Sync a running server uses, read back from its varz.
func SyncOf(s *server.Server) (Sync, error) {
	v, err := s.Varz(nil)
	if err != nil {
		return "", fmt.Errorf("nats varz: %w", err)
	}
	if v.JetStream.Config == nil {
		return "", errors.New("nats server runs without JetStream")
	}
	if v.JetStream.Config.SyncAlways {
		return SyncAlways, nil
	}
	return SyncInterval, nil
}

// User is one login of the server. A user without Tenant is a service
// user and may do anything; a user with Tenant is a producer of that
// tenant (see ProducerPermissions).
type User struct {
	Name     string
	Password string
	// Tenant makes the user a producer of that tenant only.
	Tenant string
}

// ProducerPermissions is all a tenant's producer may do: publish to
// surge.in.<tenant> and below (captured by INGEST), and receive replies
// (PubAcks) on its own inbox prefix _INBOX_<tenant>. It cannot publish
// anywhere else (not EVENTS, BATCHES, ingest.*, another tenant's subjects
// nor the JetStream API, so it cannot read streams) and cannot subscribe
// to anything but its inbox.
func ProducerPermissions(tenant string) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: streams.ProducerSubjects(tenant)},
		Subscribe: &server.SubjectPermission{Allow: []string{streams.ProducerInboxPrefix(tenant) + ".>"}},
	}
}

func (o Options) validate() error {
	var errs []error
	if _, err := ParseSync(string(o.Sync)); err != nil {
		errs = append(errs, err)
	}
	seen := map[string]bool{}
	for i, u := range o.Users {
		if u.Name == "" || u.Password == "" {
			errs = append(errs, fmt.Errorf("user %d: name and password are required", i+1))
		}
		if seen[u.Name] {
			errs = append(errs, fmt.Errorf("user %q listed twice", u.Name))
		}
		seen[u.Name] = true
		if u.Tenant != "" && !event.ValidTenant(u.Tenant) {
			errs = append(errs, fmt.Errorf("user %q: tenant %q must be 1 to 64 letters, digits, '_' or '-'", u.Name, u.Tenant))
		}
	}
	if o.MQTTPort != 0 && len(o.Users) == 0 {
		// Without users MQTT clients would publish anywhere, as anyone.
		errs = append(errs, errors.New("mqtt needs users"))
	}
	return errors.Join(errs...)
}

// Start runs an embedded server and waits until it accepts connections.
func Start(o Options) (*server.Server, error) {
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("nats server options: %w", err)
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = 16 << 20
	}
	opts := &server.Options{
		// MQTT needs a server name as well as JetStream.
		ServerName:         "surge-local",
		Host:               o.Host,
		Port:               o.Port,
		JetStream:          true,
		StoreDir:           o.StoreDir,
		MaxPayload:         o.MaxPayload,
		MaxPending:         int64(o.MaxPayload) * 4,
		NoSigs:             true,
		NoLog:              true,
		JetStreamMaxMemory: 256 << 20,
		SyncInterval:       DefaultSyncInterval,
		SyncAlways:         o.Sync == SyncAlways,
	}
	for _, u := range o.Users {
		su := &server.User{Username: u.Name, Password: u.Password}
		if u.Tenant != "" {
			su.Permissions = ProducerPermissions(u.Tenant)
		}
		opts.Users = append(opts.Users, su)
	}
	if o.MQTTPort != 0 {
		opts.MQTT.Host = o.Host
		opts.MQTT.Port = o.MQTTPort
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("new nats server: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats server not ready after 10s")
	}
	return s, nil
}

// MQTTPort is the port the server's MQTT listener took; 0 when it has none.
func MQTTPort(s *server.Server) int {
	v, err := s.Varz(nil)
	if err != nil {
		return 0
	}
	return v.MQTT.Port
}
