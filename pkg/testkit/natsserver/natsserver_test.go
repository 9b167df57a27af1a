package natsserver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
)

// connect logs in as user and collects the asynchronous errors the server
// sends (permission violations arrive that way).
func connect(t *testing.T, url, user, password string, opts ...nats.Option) (*nats.Conn, <-chan error) {
	t.Helper()
	errs := make(chan error, 64)
	opts = append(opts, nats.UserInfo(user, password), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}))
	nc, err := nats.Connect(url, opts...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc, errs
}

func requireViolation(t *testing.T, errs <-chan error, subject string) {
	t.Helper()
	select {
	case err := <-errs:
		require.ErrorContains(t, err, "Permissions Violation")
		require.ErrorContains(t, err, subject)
	case <-time.After(5 * time.Second):
		t.Fatalf("no permission violation for %s", subject)
	}
}

func TestProducerPermissions(t *testing.T) {
	s, err := natsserver.Start(natsserver.Options{
		Port: -1, StoreDir: t.TempDir(), MQTTPort: -1,
		Users: []natsserver.User{
			{Name: "surge", Password: "svc"},
			{Name: "acme", Password: "a", Tenant: "acme"},
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	require.Positive(t, natsserver.MQTTPort(s))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	_, err = nats.Connect(s.ClientURL())
	require.Error(t, err, "anonymous clients are refused")
	_, err = nats.Connect(s.ClientURL(), nats.UserInfo("acme", "wrong"))
	require.Error(t, err)

	svc, _ := connect(t, s.ClientURL(), "surge", "svc")
	sjs, err := jetstream.New(svc)
	require.NoError(t, err)
	require.NoError(t, streams.Ensure(ctx, sjs, streams.DefaultConfig()))

	nc, errs := connect(t, s.ClientURL(), "acme", "a", nats.CustomInboxPrefix(streams.ProducerInboxPrefix("acme")))
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ack, err := js.Publish(ctx, "surge.in.acme.web", []byte(`{"user_id":"u","type":"t"}`), jetstream.WithMsgID("one"))
	require.NoError(t, err, "a producer publishes to its own tenant and gets the PubAck")
	require.Equal(t, streams.Ingest, ack.Stream)
	ack, err = js.Publish(ctx, "surge.in.acme.web", []byte(`{"user_id":"u","type":"t"}`), jetstream.WithMsgID("one"))
	require.NoError(t, err)
	require.True(t, ack.Duplicate, "Nats-Msg-Id dedups a retry")

	for _, subject := range []string{"surge.in.globex.web", "surge.in.globex", "events.shard.0", "batches.shard.0", "ingest.acme", "deadletter.x", "$JS.API.STREAM.INFO.INGEST"} {
		require.NoError(t, nc.Publish(subject, []byte(`{"user_id":"u","type":"t"}`)))
		require.NoError(t, nc.Flush())
		requireViolation(t, errs, subject)
	}
	_, err = nc.SubscribeSync("events.>")
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	requireViolation(t, errs, "events.>")
	_, err = nc.SubscribeSync("_INBOX.>")
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	requireViolation(t, errs, "_INBOX.>")

	// Reading a stream needs the JetStream API, which a producer cannot reach.
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	defer cancelShort()
	_, err = js.Stream(short, streams.Events)
	require.Error(t, err)

	info, err := sjs.Stream(ctx, streams.Ingest)
	require.NoError(t, err)
	st, err := info.Info(ctx, jetstream.WithSubjectFilter(">"))
	require.NoError(t, err)
	require.Equal(t, map[string]uint64{"surge.in.acme.web": 1}, st.State.Subjects, "only the allowed publish landed")
}

func TestOptionsValidate(t *testing.T) {
	_, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: t.TempDir(), MQTTPort: -1})
	require.ErrorContains(t, err, "mqtt needs users")
	_, err = natsserver.Start(natsserver.Options{Port: -1, StoreDir: t.TempDir(), Users: []natsserver.User{
		{Name: "a", Password: "p", Tenant: "bad.tenant"}, {Name: "a", Password: ""},
	}})
	require.Error(t, err)
	for _, want := range []string{"bad.tenant", "listed twice", "password are required"} {
		require.ErrorContains(t, err, want)
	}
}

func TestSync(t *testing.T) {
	for _, tc := range []struct {
		sync natsserver.Sync
		want natsserver.Sync
	}{{"", natsserver.SyncInterval}, {natsserver.SyncInterval, natsserver.SyncInterval}, {natsserver.SyncAlways, natsserver.SyncAlways}} {
		s, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: t.TempDir(), Sync: tc.sync})
		require.NoError(t, err)
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		got, err := natsserver.SyncOf(s)
		require.NoError(t, err)
		require.Equal(t, tc.want, got, "sync %q", tc.sync)
		v, err := s.Varz(nil)
		require.NoError(t, err)
		require.Equal(t, tc.want == natsserver.SyncAlways, v.JetStream.Config.SyncAlways, "sync %q", tc.sync)
		require.Equal(t, natsserver.DefaultSyncInterval, v.JetStream.Config.SyncInterval)
	}

	_, err := natsserver.Start(natsserver.Options{Port: -1, StoreDir: t.TempDir(), Sync: "sometimes"})
	require.EqualError(t, err, `nats server options: nats sync must be "always" or "interval", got "sometimes"`)
	_, err = natsserver.ParseSync("Always")
	require.EqualError(t, err, `nats sync must be "always" or "interval", got "Always"`)
	got, err := natsserver.ParseSync("")
	require.NoError(t, err)
	require.Equal(t, natsserver.SyncInterval, got)
}

// TestClusterConfigSync reads the compose cluster's configuration with
// nats-server's parser: it syncs on nats-server's default interval, the
// same as the embedded server's SyncInterval, and "always" in its place
// turns SyncAlways on.
func TestClusterConfigSync(t *testing.T) {
	t.Setenv("SERVER_NAME", "nats-0")
	t.Setenv("SURGE_SERVICE_PASSWORD", "svc")
	t.Setenv("SURGE_DEMO_PASSWORD", "demo")
	conf, err := os.ReadFile(filepath.Join("..", "..", "..", "deployments", "nats", "cluster.conf"))
	require.NoError(t, err)
	const line = `sync_interval: "2m"`
	require.Equal(t, 1, strings.Count(string(conf), line))

	opts, err := server.ProcessConfigFile(filepath.Join("..", "..", "..", "deployments", "nats", "cluster.conf"))
	require.NoError(t, err)
	require.False(t, opts.SyncAlways)
	require.Equal(t, natsserver.DefaultSyncInterval, opts.SyncInterval)

	always := filepath.Join(t.TempDir(), "cluster.conf")
	require.NoError(t, os.WriteFile(always, []byte(strings.Replace(string(conf), line, "sync_interval: always", 1)), 0o644))
	opts, err = server.ProcessConfigFile(always)
	require.NoError(t, err)
	require.True(t, opts.SyncAlways)
}
