package main

import (
	"context"
	"flag"
	"fmt"
	"os/signal"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/surge-events/surge/pkg/telemetry"
	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/natsserver"
	"github.com/surge-events/surge/tools/stack"
)

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dir := fs.String("dir", ".surge", "data `folder` for NATS and ClickHouse (one stack at a time: it is locked while in use)")
	fresh := fs.Bool("fresh", false, "delete the data folder's content first")
	shards := fs.Int("shards", 8, "logical shards")
	servers := fs.Int("clickhouse-servers", 2, "clickhouse-server processes (ClickHouse shards)")
	httpAddr := fs.String("http", "127.0.0.1:8080", "ingest listen `address`")
	natsPort := fs.Int("nats-port", 4222, "NATS client port (-1 for any free port)")
	mqttPort := fs.Int("mqtt-port", 1883, "MQTT port of NATS (-1 for any free port, 0 for none)")
	level := fs.String("log-level", "warn", "service log level")
	natsSync := stack.NATSSyncFlag(fs)
	withJaeger := fs.Bool("jaeger", false, "also run a local Jaeger (v2, all-in-one, spans in memory; built into the tools cache on first use, minutes) on free ports, send every service's spans to it over OTLP and trace every request (unless OTEL_TRACES_SAMPLER is set); the banner shows its address")
	cluster := fs.Bool("cluster", false, "run a local cluster of separate processes instead: 3 NATS nodes (streams at 3 replicas), ZooKeeper, 2 ClickHouse shards x 2 replicas and two processes of each service (built from the source tree into <dir>/bin); --http then takes the two ingest addresses, comma separated (default "+defaultClusterHTTP+"); --clickhouse-servers, --nats-port, --mqtt-port and --nats-sync do not apply")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cluster {
		httpSet := false
		fs.Visit(func(f *flag.Flag) { httpSet = httpSet || f.Name == "http" })
		addrs := defaultClusterHTTP
		if httpSet {
			addrs = *httpAddr
		}
		return upCluster(*dir, *fresh, *shards, addrs, *level, *withJaeger)
	}
	sync, err := natsserver.ParseSync(*natsSync)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logf := func(f string, a ...any) { fmt.Printf("surge: "+f+"\n", a...) }
	if err := chserver.EnsureInstalled(ctx, logf); err != nil {
		return err
	}
	// Jaeger starts before the tracer providers read the OTEL_* variables
	// it sets, and stops after they have flushed.
	var j *localJaeger
	if *withJaeger {
		if j, err = startJaeger(ctx, logf); err != nil {
			return err
		}
		defer func() {
			if err := j.Stop(); err != nil {
				logf("%v", err)
			}
		}()
	}
	logger, err := telemetry.NewLogger(telemetry.LogConfig{Level: *level, Format: "console"}, "")
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()
	// One provider per service, as in a deployment, so traces name each
	// service: --jaeger, or OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318
	// for a Jaeger of one's own, sends them to Jaeger; else tracing is off.
	providers := map[string]trace.TracerProvider{}
	for _, name := range []string{"ingest", "partitioner", "batcher", "sink"} {
		tp, shutdownTracing, err := telemetry.SetupTracing(ctx, "surge-"+name)
		if err != nil {
			return err
		}
		defer func() { _ = shutdownTracing(context.Background()) }()
		providers[name] = tp
	}

	fmt.Println("surge: starting NATS JetStream, ClickHouse and the four services...")
	started := time.Now()
	st, err := stack.Start(ctx, stack.Options{
		Dir: *dir, Shards: *shards, ClickHouseServers: *servers,
		Fresh: *fresh, NATSPort: *natsPort, NATSSync: sync, MQTTPort: *mqttPort, HTTPAddr: *httpAddr, Logger: logger,
		TracerProviders: func(name string) trace.TracerProvider { return providers[name] },
	})
	if err != nil {
		return err
	}
	info := st.Info()
	if err := stack.WriteInfo(*dir, info); err != nil {
		fmt.Printf("surge: %v; `surge query` and `surge deadletter` will not find this stack\n", err)
	}
	printBanner(st, info, sync, time.Since(started), j)

	progress(ctx, st)

	fmt.Println("\nsurge: stopping: ingest, partitioner, batcher, sink, then ClickHouse and NATS...")
	err = st.Stop()
	_ = stack.RemoveInfo(*dir)
	if err != nil {
		return err
	}
	fmt.Println("surge: stopped cleanly; data kept in", *dir, "(use --fresh to start empty)")
	return nil
}

func printBanner(st *stack.Stack, info stack.Info, sync natsserver.Sync, took time.Duration, j *localJaeger) {
	fmt.Printf(`
surge: up in %s
  send events   curl -X POST %s/v1/events -H 'Content-Type: application/json' \
                  -d '[{"user_id":"u1","type":"page_view","properties":{"path":"/"}}]'
  query         go tool task query -- "SELECT type, count() FROM %s.events GROUP BY type"
  NATS          %s (services log in as %s)
  publish       nats pub -s %s --user %s --password %s -J --inbox-prefix _INBOX_%s \
                  surge.in.%s.web '{"user_id":"u1","type":"click"}'
  ClickHouse    %v (native), %v (HTTP); database %s, tables events (all shards), events_local
`, took.Round(time.Millisecond), info.IngestURL, info.Database, info.NATSURL, info.NATSUser,
		info.NATSURL, stack.DemoProducer.Name, stack.DemoProducer.Password, stack.DemoProducer.Tenant, stack.DemoProducer.Tenant,
		info.ClickHouse, info.HTTP, info.Database)
	fmt.Printf("  durability    %s\n", durability(sync))
	if st.MQTTPort != 0 {
		fmt.Printf("  MQTT          mosquitto_pub -p %d -u %s -P %s -q 1 -t surge/in/%s/device1 -m '{\"user_id\":\"d1\",\"type\":\"reading\"}'\n",
			st.MQTTPort, stack.DemoProducer.Name, stack.DemoProducer.Password, stack.DemoProducer.Tenant)
	}
	fmt.Print(j.banner())
	for _, p := range st.Parts {
		fmt.Printf("  %-13s http://%s/metrics\n", p.Name, p.AdminAddr)
	}
	fmt.Println("\nPress Ctrl-C to stop.")
}

// durability says what a 202 survives under sync.
func durability(sync natsserver.Sync) string {
	if sync == natsserver.SyncAlways {
		return "--nats-sync always: JetStream fsyncs before every acknowledgement; a 202 survives a crash of this process or of the machine"
	}
	return fmt.Sprintf("--nats-sync interval: JetStream fsyncs every %s; a 202 survives a crash of this process, not a power cut or kernel crash", natsserver.DefaultSyncInterval)
}
