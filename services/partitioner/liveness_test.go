package partitioner

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/surge-events/surge/pkg/retry"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// observed is a test logger whose warnings and errors can be read back.
func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zap.InfoLevel)
	test := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Core()
	return zap.New(zapcore.NewTee(test, core)), logs
}

// stalls is surge_partitioner_stalls_total{shard="input"}.
func stalls(s *Service) (float64, error) {
	families, err := s.host.Registry.Gather()
	if err != nil {
		return 0, err
	}
	for _, f := range families {
		if f.GetName() != "surge_partitioner_stalls_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "shard" && l.GetValue() == "input" {
					return m.GetCounter().GetValue(), nil
				}
			}
		}
	}
	return 0, nil // no stall yet: the series appears with the first
}

func redeliveries(s *Service) int { return int(testutil.ToFloat64(s.m.redelivered)) }

var readyClient = &http.Client{Timeout: 2 * time.Second}

func readyz(addr string) (int, string, error) {
	resp, err := readyClient.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitPartitioning waits until the partitioner has its consumer and runs
// its workers.
func waitPartitioning(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	ok := assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 1, logs.FilterMessage("partitioning").Len())
	}, 10*time.Second, 10*time.Millisecond)
	if !ok {
		t.FailNow()
	}
}

// TestCrashedHolderIsRedeliveredInSeconds: a partitioner SIGKILLed with
// fetched requests leaves them ack-pending on the server. With the short
// AckWait they are redelivered to the next partitioner in seconds, not
// after the old 30 s, and every event lands in EVENTS once.
func TestCrashedHolderIsRedeliveredInSeconds(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	inputs := publishInputs(t, js, 40, 50) // 14 of tenant0
	cfg := testConfig(ns.ClientURL())
	require.Equal(t, DefaultConfig().AckWait, cfg.AckWait, "the default AckWait is under test")

	// The crashed partitioner: its own connection, a fetch from tenant0's
	// consumer, no ack, gone.
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	defer nc.Close()
	cjs, err := jetstream.New(nc)
	require.NoError(t, err)
	cons, err := cjs.CreateOrUpdateConsumer(t.Context(), streams.Ingest, cfg.consumerConfig("tenant0"))
	require.NoError(t, err)
	mb, err := cons.Fetch(10, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	held := 0
	for range mb.Messages() {
		held++
	}
	require.NoError(t, mb.Error())
	require.Equal(t, 10, held)
	nc.Close()
	killed := time.Now()

	p := start(t, cfg)
	// 15 s: well below the old 30 s AckWait, above the new 5 s.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 40, messagesMetric(p, outcomeAcked))
	}, 15*time.Second, 20*time.Millisecond)
	t.Logf("every request acked %s after the kill", time.Since(killed).Round(time.Millisecond))
	waitDrained(t, js)
	perShard := requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Equal(t, perShard, eventsMetric(p))
	require.Equal(t, 10, redeliveries(p), "the requests the dead partitioner held, each once")
	require.Equal(t, 0, messagesMetric(p, outcomeNaked))
}

// TestHeldRequestsAreKeptAlive: a worker holds its batch longer than
// AckWait (here while the fetch waits to fill it); InProgress keeps the
// requests from being redelivered to the other worker meanwhile.
func TestHeldRequestsAreKeptAlive(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	inputs := publishInputs(t, js, 5, 100)
	cfg := testConfig(ns.ClientURL())
	cfg.AckWait = minAckWait
	cfg.FetchMaxWait = 4 * cfg.AckWait // a batch that is not full is held this long
	cfg.Workers = 2

	p := start(t, cfg)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 5, messagesMetric(p, outcomeAcked))
	}, 15*time.Second, 20*time.Millisecond)
	waitDrained(t, js)
	requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Equal(t, 0, redeliveries(p), "no request was redelivered while held")
}

// TestStallIsReportedAndRepaired: EVENTS refuses every publish, so the
// input has work pending and settles nothing. The watchdog logs and
// counts the stall once, /readyz names it, the consumer is recreated;
// once EVENTS takes publishes again the work resumes, readiness returns
// and every event is in EVENTS once.
func TestStallIsReportedAndRepaired(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())
	cfg.StallTimeout = 5 * time.Second
	cfg.Retry = retry.Config{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond, Multiplier: 2, RandomizationFactor: 0.2}
	logger, logs := observed(t)
	p := startWith(t, cfg, logger)
	waitPartitioning(t, logs)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		code, _, err := readyz(p.AdminAddr())
		assert.NoError(c, err)
		assert.Equal(c, http.StatusOK, code)
	}, 10*time.Second, 20*time.Millisecond)

	// EVENTS is full: at most one message, a group of one request.
	var eventsCfg jetstream.StreamConfig
	for _, sc := range streams.Definitions(cfg.Streams) {
		if sc.Name == streams.Events {
			eventsCfg = sc
		}
	}
	full := eventsCfg
	full.MaxMsgs = 1
	_, err := js.UpdateStream(t.Context(), full)
	require.NoError(t, err)
	inputs := publishInputs(t, js, 10, 100)

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		n, err := stalls(p)
		assert.NoError(c, err)
		assert.Equal(c, 1.0, n)
		code, body, err := readyz(p.AdminAddr())
		assert.NoError(c, err)
		assert.Equal(c, http.StatusServiceUnavailable, code)
		assert.Contains(c, body, "stalled input: ")
		assert.Contains(c, body, " pending, no progress for ")
		assert.Regexp(c, `waiting on (fetch from INGEST|PubAcks from EVENTS) \(last failure: publish events\.shard\.\d+: .*maximum messages exceeded\)`, body)
	}, 15*time.Second, 20*time.Millisecond)
	_, body, err := readyz(p.AdminAddr())
	require.NoError(t, err)
	t.Logf("readyz while stalled: %s", body)
	// Every tenant's consumer (tenant0, tenant1, tenant2), once.
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 3, logs.FilterMessage("consumer recreated").FilterField(zap.String("why", "stalled")).Len())
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, 1, logs.FilterMessage("stalled: work pending, no progress").FilterField(zap.String("unit", "input")).Len())
	require.Equal(t, 0, messagesMetric(p, outcomeAcked))

	_, err = js.UpdateStream(t.Context(), eventsCfg)
	require.NoError(t, err)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 10, messagesMetric(p, outcomeAcked))
		code, body, err := readyz(p.AdminAddr())
		assert.NoError(c, err)
		assert.Equal(c, http.StatusOK, code, body)
	}, 15*time.Second, 20*time.Millisecond)
	waitDrained(t, js)
	perShard := requireExactlyOnce(t, inputs, readEvents(t, js))
	require.Equal(t, perShard, eventsMetric(p))
	n, err := stalls(p)
	require.NoError(t, err)
	require.Equal(t, 1.0, n, "one stall, counted once")
	require.Equal(t, 1, logs.FilterMessage("progress resumed").Len())
}

// TestConsumerLostInNATSRestartIsRecreated: NATS restarts with an empty
// store, so the tenants' consumers are gone. The partitioner recreates
// each at its first fetch (no stall to wait out) and partitions what
// arrives on the new server.
func TestConsumerLostInNATSRestartIsRecreated(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	port := ns.Addr().(*net.TCPAddr).Port
	cfg := testConfig(ns.ClientURL())
	logger, logs := observed(t)
	p := startWith(t, cfg, logger)
	waitPartitioning(t, logs)
	before := publishInputs(t, js, 6, 10) // the three tenants' consumers are made
	waitDrained(t, js)
	requireExactlyOnce(t, before, readEvents(t, js))
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 6, messagesMetric(p, outcomeAcked))
	}, 15*time.Second, 20*time.Millisecond)

	ns.Shutdown()
	ns.WaitForShutdown()
	ns2, err := natsserver.Start(natsserver.Options{Port: port, StoreDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() {
		ns2.Shutdown()
		ns2.WaitForShutdown()
	})
	js2 := natstest.JetStream(t, ns2.ClientURL())
	inputs := publishInputs(t, js2, 10, 50)

	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 6+10, messagesMetric(p, outcomeAcked))
	}, 15*time.Second, 20*time.Millisecond)
	waitDrained(t, js2)
	requireExactlyOnce(t, inputs, readEvents(t, js2))
	require.Equal(t, 3, logs.FilterMessage("consumer recreated").FilterField(zap.String("why", "gone")).Len(), "each tenant's, once")
	n, err := stalls(p)
	require.NoError(t, err)
	require.Zero(t, n)
}

func TestValidateLiveness(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // empty: valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"ack wait too short", func(c *Config) { c.AckWait = 999 * time.Millisecond }, "ack_wait must be at least 1s, got 999ms"},
		{"shortest ack wait", func(c *Config) { c.AckWait = time.Second }, ""},
		{"publish timeout may exceed ack wait", func(c *Config) { c.AckWait, c.PublishTimeout = time.Second, 10*time.Second }, ""},
		{"stall timeout not positive", func(c *Config) { c.StallTimeout = 0 }, "stall_timeout must exceed fetch_max_wait+2*publish_timeout (20.5s), got 0s"},
		{"stall timeout within a batch's PubAck wait", func(c *Config) { c.StallTimeout = 20 * time.Second }, "stall_timeout must exceed fetch_max_wait+2*publish_timeout (20.5s), got 20s"},
		{"info interval too long for the watchdog", func(c *Config) { c.InfoInterval = 16 * time.Second }, "info_interval must be positive and at most stall_timeout/2 (15s), got 16s"},
		{"info interval not positive", func(c *Config) { c.InfoInterval = 0 }, "info_interval must be positive"},
		{"republish outside the dedup window", func(c *Config) { c.PublishTimeout = 21 * time.Second; c.StallTimeout = time.Minute },
			"let a request be republished 2m1s after its first publish (2*(fetch_max_wait+2*publish_timeout) + max(ack_wait, longest retry wait)); it must be below streams.duplicate_window (2m0s)"},
		{"retry outside the dedup window", func(c *Config) { c.Retry.Max = 90 * time.Second },
			"let a request be republished 2m29s after its first publish"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestDefaultsAreLive(t *testing.T) {
	cfg := DefaultConfig()
	require.Equal(t, 5*time.Second, cfg.AckWait)
	require.Equal(t, 30*time.Second, cfg.StallTimeout)
	require.Equal(t, 2*time.Second, cfg.InfoInterval)
	require.Less(t, cfg.AckWait, cfg.PublishTimeout, "a PubAck slower than AckWait (an election) is waited for, the request kept alive")
	require.Equal(t, time.Minute, cfg.TenantIdle)
	require.Equal(t, jetstream.ConsumerConfig{
		Durable:           "partitioner-acme",
		Description:       "Surge partitioners, tenant acme",
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           5 * time.Second,
		MaxDeliver:        -1,
		MaxAckPending:     1024,
		FilterSubjects:    []string{"ingest.acme", "ingest.acme.>", "surge.in.acme", "surge.in.acme.>"},
		InactiveThreshold: time.Minute,
		Metadata:          map[string]string{"surge.tenant": "acme"},
	}, cfg.consumerConfig("acme"))
}

// TestRefusedConsumerKeepsNotReady: while the server refuses a tenant's
// consumer (here another consumer filters one of its subjects, which a
// work queue does not allow), the partitioner retries and /readyz gives
// the server's reason, and the other tenants are partitioned meanwhile;
// once the obstacle is gone it partitions that tenant too.
func TestRefusedConsumerKeepsNotReady(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.ClientURL())
	cfg := testConfig(ns.ClientURL())
	cfg.Retry.Max = 500 * time.Millisecond
	_, err := js.CreateConsumer(t.Context(), streams.Ingest, jetstream.ConsumerConfig{
		Durable: "other", FilterSubject: streams.IngestSubject("tenant0"), AckPolicy: jetstream.AckExplicitPolicy,
	})
	require.NoError(t, err)
	inputs := publishInputs(t, js, 6, 20) // 2 of each tenant

	p := start(t, cfg)
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		code, body, err := readyz(p.AdminAddr())
		assert.NoError(c, err)
		assert.Equal(c, http.StatusServiceUnavailable, code)
		assert.Contains(c, body, "consumer: create consumer partitioner-tenant0: ")
		assert.Contains(c, body, "filtered consumer not unique on workqueue stream")
		assert.Equal(c, 4, messagesMetric(p, outcomeAcked), "tenant1's and tenant2's")
	}, 10*time.Second, 20*time.Millisecond)

	require.NoError(t, js.DeleteConsumer(t.Context(), streams.Ingest, "other"))
	assert.EventuallyWithT(t, func(c *assert.CollectT) {
		assert.Equal(c, 6, messagesMetric(p, outcomeAcked))
		code, body, err := readyz(p.AdminAddr())
		assert.NoError(c, err)
		assert.Equal(c, http.StatusOK, code, body)
	}, 10*time.Second, 20*time.Millisecond)
	waitDrained(t, js)
	requireExactlyOnce(t, inputs, readEvents(t, js))
}
