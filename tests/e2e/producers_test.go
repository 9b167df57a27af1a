package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/tools/stack"
)

// natsCLIVersion is the release of the nats CLI the tests drive; .ci/run
// installs the same one into the same place.
const natsCLIVersion = "v0.5.0"

var (
	natsCLIOnce sync.Once
	natsCLIPath string
	natsCLIErr  error
)

// natsCLI returns the path of the real nats CLI: $SURGE_NATS_CLI, or the
// one cached in <user cache>/surge-tools/natscli-<version>, which it
// installs there with `go install` the first time (a few minutes).
func natsCLI(t *testing.T) string {
	t.Helper()
	natsCLIOnce.Do(func() {
		if p := os.Getenv("SURGE_NATS_CLI"); p != "" {
			natsCLIPath = p
			return
		}
		cache, err := os.UserCacheDir()
		if err != nil {
			natsCLIErr = err
			return
		}
		dir := filepath.Join(cache, "surge-tools", "natscli-"+natsCLIVersion)
		natsCLIPath = filepath.Join(dir, "nats")
		if _, err := os.Stat(natsCLIPath); err == nil {
			return
		}
		install := exec.Command("go", "install", "github.com/nats-io/natscli/nats@"+natsCLIVersion)
		install.Dir = os.TempDir() // outside the workspace: its own module graph
		install.Env = append(os.Environ(), "GOBIN="+dir, "GOWORK=off")
		if out, err := install.CombinedOutput(); err != nil {
			natsCLIErr = fmt.Errorf("go install natscli %s: %v\n%s", natsCLIVersion, err, out)
		}
	})
	require.NoError(t, natsCLIErr)
	return natsCLIPath
}

// producer logins of the test stack, one per tenant.
var (
	demo   = stack.DemoProducer
	device = natsserver.User{Name: "device", Password: "device-pw", Tenant: "iot"}
	acme   = natsserver.User{Name: "acme", Password: "acme-pw", Tenant: "acme"}
)

// TestProducers publishes straight to NATS and MQTT with clients nobody
// here wrote (the nats CLI, mosquitto_pub) and with nats.go, and checks
// what lands in ClickHouse and DEAD_LETTER, exactly.
func TestProducers(t *testing.T) {
	cli := natsCLI(t)
	mosquitto, err := exec.LookPath("mosquitto_pub")
	require.NoError(t, err, "mosquitto_pub is missing: apt-get install mosquitto-clients (.ci/run does)")

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{
		Dir: t.TempDir(), Shards: shards, ClickHouseServers: 2, NATSPort: -1, MQTTPort: -1,
		Producers: []natsserver.User{demo, device, acme},
		Policy:    batch.Policy{MaxRows: 5000, MaxBytes: 8 << 20, MaxAge: 200 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Stop()) })
	ch := openServers(t, st)[0]
	servers := chHTTP(st)
	installAudit(t, servers, st.Database)
	url := st.NATS.ClientURL()

	// natsCmd runs the nats CLI as user u and returns its combined output;
	// timeout bounds its wait for an answer.
	natsCmd := func(u natsserver.User, timeout string, args ...string) (string, error) {
		base := []string{"--server", url, "--user", u.Name, "--password", u.Password,
			"--inbox-prefix", streams.ProducerInboxPrefix(u.Tenant), "--timeout", timeout, "--no-context"}
		cmd := exec.Command(cli, append(base, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no user contexts
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	t.Run("nats CLI", func(t *testing.T) {
		msgs := []struct{ subject, body, msgID string }{
			{"surge.in.demo.web", `{"event_id":"cli-1","user_id":"u1","type":"click"}`, "m1"},
			{"surge.in.demo.web", `[{"event_id":"cli-2","user_id":"u2","type":"view"},{"event_id":"cli-3","user_id":3,"type":"view"}]`, "m2"},
			{"surge.in.demo.app.ios", "{\"event_id\":\"cli-4\",\"user_id\":\"u4\",\"type\":\"open\"}\n{\"event_id\":\"cli-5\",\"user_id\":\"u5\",\"type\":\"close\"}\n", "m3"},
			// A producer retry: same Nats-Msg-Id, dropped by INGEST.
			{"surge.in.demo.web", `{"event_id":"cli-1","user_id":"u1","type":"click"}`, "m1"},
		}
		for i, m := range msgs {
			out, err := natsCmd(demo, "10s", "pub", "--jetstream", "-H", "Nats-Msg-Id:"+m.msgID, m.subject, m.body)
			require.NoError(t, err, out)
			require.Contains(t, out, "Stored in Stream: INGEST", out)
			if i == len(msgs)-1 {
				require.Contains(t, out, "Duplicate", "the retry is recognised: %s", out)
			}
		}
		// Without an ack: a core publish, captured all the same.
		out, err := natsCmd(demo, "10s", "pub", "surge.in.demo.web", `{"event_id":"cli-6","user_id":"u6","type":"click"}`)
		require.NoError(t, err, out)

		want := map[string]string{"cli-1": "u1", "cli-2": "u2", "cli-3": "3", "cli-4": "u4", "cli-5": "u5", "cli-6": "u6"}
		requireStoredOnce(t, ch, servers, st.Database, "demo", want)
	})

	t.Run("nats CLI with another tenant's subject or a stream is refused", func(t *testing.T) {
		// The server refuses at once; the CLI then waits out its timeout
		// for a PubAck or an API answer that cannot come.
		for _, subject := range []string{"surge.in.acme.web", "events.shard.0", "batches.shard.0", "ingest.demo"} {
			out, err := natsCmd(demo, "1s", "pub", "--jetstream", subject, `{"event_id":"stolen","user_id":"x","type":"t"}`)
			require.Error(t, err, "publish to %s: %s", subject, out)
			require.Contains(t, out, `Permissions Violation for Publish to "`+subject+`"`)
		}
		for _, c := range []struct{ args []string }{
			{[]string{"stream", "ls"}}, {[]string{"stream", "info", "EVENTS"}}, {[]string{"stream", "get", "INGEST", "1"}},
			{[]string{"sub", "events.>", "--count", "1"}}, {[]string{"sub", "_INBOX.>", "--count", "1"}},
		} {
			out, err := natsCmd(demo, "1s", c.args...)
			require.Error(t, err, "%v: %s", c.args, out)
			require.Contains(t, out, "Permissions Violation", "%v: %s", c.args, out)
		}
	})

	t.Run("mosquitto_pub over MQTT QoS 1 and 2", func(t *testing.T) {
		mqtt := func(args ...string) (string, error) {
			base := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(st.MQTTPort), "-u", device.Name, "-P", device.Password}
			out, err := exec.Command(mosquitto, append(base, args...)...).CombinedOutput()
			return string(out), err
		}
		// Another tenant's topic: the server drops the message (and still
		// sends the PUBACK MQTT requires); the final count proves it.
		out, err := mqtt("-q", "1", "-t", "surge/in/acme/stolen", "-m", `{"event_id":"mqtt-stolen","user_id":"x","type":"t"}`)
		require.NoError(t, err, out)

		var lines []string
		want := map[string]string{}
		for i := range 20 {
			id := fmt.Sprintf("mqtt-%02d", i)
			lines = append(lines, fmt.Sprintf(`{"event_id":%q,"user_id":"sensor-%d","type":"reading","properties":{"celsius":%d}}`, id, i%4, 20+i))
			want[id] = "sensor-" + strconv.Itoa(i%4)
		}
		// -l sends each line of stdin as one message, QoS 1 each.
		cmd := exec.Command(mosquitto, "-h", "127.0.0.1", "-p", strconv.Itoa(st.MQTTPort), "-i", "surge-e2e-device",
			"-u", device.Name, "-P", device.Password, "-q", "1", "-t", "surge/in/iot/sensors/hall", "-l")
		cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
		stdout, err := cmd.CombinedOutput()
		require.NoError(t, err, string(stdout))

		// QoS 2 works too: nats-server holds the message until PUBREL.
		out, err = mqtt("-q", "2", "-t", "surge/in/iot/sensors/roof", "-m", `{"event_id":"mqtt-qos2","user_id":"roof","type":"reading"}`)
		require.NoError(t, err, out)
		want["mqtt-qos2"] = "roof"

		// Wrong password: refused at connect.
		bad := exec.Command(mosquitto, "-h", "127.0.0.1", "-p", strconv.Itoa(st.MQTTPort), "-u", device.Name, "-P", "nope",
			"-q", "1", "-t", "surge/in/iot/x", "-m", `{"user_id":"x","type":"t"}`)
		badOut, err := bad.CombinedOutput()
		require.Error(t, err, string(badOut))

		requireStoredOnce(t, ch, servers, st.Database, "iot", want)
	})

	t.Run("mixed message stores the valid events and dead-letters the invalid ones", func(t *testing.T) {
		nc, err := nats.Connect(url, nats.UserInfo(acme.Name, acme.Password), nats.CustomInboxPrefix(streams.ProducerInboxPrefix(acme.Tenant)))
		require.NoError(t, err)
		defer nc.Close()
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		body := strings.Join([]string{
			`{"event_id":"mix-1","user_id":"a1","type":"click"}`,
			`{"event_id":"mix-2","user_id":"a2"}`,
			`{"event_id":"mix-3","user_id":"a3","type":"click","ts":"yesterday"}`,
			`{"event_id":"mix-4","user_id":"a4","type":"view","properties":{"k":"v"}}`,
			`{"event_id":"mix-5","user_id":"a5","type":"view","tenant":"demo"}`,
		}, "\n")
		ack, err := js.Publish(ctx, "surge.in.acme.checkout", []byte(body), jetstream.WithMsgID("acme-mixed-1"))
		require.NoError(t, err)
		require.Equal(t, streams.Ingest, ack.Stream)
		_, err = js.Publish(ctx, "surge.in.acme.checkout", []byte("definitely not json"))
		require.NoError(t, err)

		requireStoredOnce(t, ch, servers, st.Database, "acme", map[string]string{"mix-1": "a1", "mix-4": "a4"})

		svc, err := nats.Connect(url, nats.UserInfo(st.NATSAuth.User, st.NATSAuth.Password))
		require.NoError(t, err)
		defer svc.Close()
		sjs, err := jetstream.New(svc)
		require.NoError(t, err)
		dl, err := sjs.Stream(ctx, streams.DeadLetter)
		require.NoError(t, err)
		var got []string
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			got = got[:0]
			info, err := dl.Info(ctx, jetstream.WithSubjectFilter(streams.InvalidSubject("acme")))
			if !assert.NoError(c, err) {
				return
			}
			assert.Equal(c, uint64(4), info.State.Subjects[streams.InvalidSubject("acme")], "dead letters of acme")
			for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
				m, err := dl.GetMsg(ctx, seq)
				if !assert.NoError(c, err) {
					return
				}
				if m.Subject == streams.InvalidSubject("acme") {
					got = append(got, m.Header.Get(streams.HeaderReason)+" | "+string(m.Data))
				}
			}
		}, 30*time.Second, 50*time.Millisecond)
		sort.Strings(got)
		require.Equal(t, []string{
			`event 1: type: required | {"event_id":"mix-2","user_id":"a2"}`,
			`event 2: ts: must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z | {"event_id":"mix-3","user_id":"a3","type":"click","ts":"yesterday"}`,
			`event 4: tenant: unknown field | {"event_id":"mix-5","user_id":"a5","type":"view","tenant":"demo"}`,
			`message is not JSON: it must hold an event object, a JSON array of events or NDJSON | definitely not json`,
		}, got)
		require.EventuallyWithT(t, func(c *assert.CollectT) {
			p := st.Part("partitioner")
			assert.Equal(c, 3.0, stack.Sum(p.Registry, "surge_partitioner_events_invalid_total"))
		}, 10*time.Second, 20*time.Millisecond)
	})

	// Nothing else anywhere: no row of a tenant its producer may not
	// write, no duplicate across the whole run.
	n, err := count(t.Context(), ch, fmt.Sprintf("SELECT count() FROM %s.events", st.Database))
	require.NoError(t, err)
	require.Equal(t, uint64(6+21+2), n)
	requireEachInsertedOnce(t, servers, st.Database, 6+21+2)
}

// requireStoredOnce waits until tenant's rows in ClickHouse are exactly
// want (event_id -> user_id), each once, and each inserted once by the
// audit of the servers at servers.
func requireStoredOnce(t *testing.T, ch driver.Conn, servers []string, db, tenant string, want map[string]string) {
	t.Helper()
	requireCount(t, ch, fmt.Sprintf("SELECT count() FROM %s.events WHERE tenant = '%s'", db, tenant), uint64(len(want)), time.Minute)
	rows, err := ch.Query(t.Context(), fmt.Sprintf("SELECT event_id, user_id FROM %s.events WHERE tenant = '%s'", db, tenant))
	require.NoError(t, err)
	defer rows.Close()
	got := map[string]string{}
	var buf bytes.Buffer
	for rows.Next() {
		var id, user string
		require.NoError(t, rows.Scan(&id, &user))
		_, dup := got[id]
		require.False(t, dup, "event %s stored twice", id)
		got[id] = user
		fmt.Fprintf(&buf, "%s ", id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, want, got, "rows of tenant %s: %s", tenant, buf.String())
	requireInsertedOnce(t, servers, db, tenant, want)
}
