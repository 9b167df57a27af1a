package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
	"github.com/surge-events/surge/tools/stack"
)

// defaultClusterHTTP are the ingest addresses of `surge up --cluster`.
const defaultClusterHTTP = "127.0.0.1:8080,127.0.0.1:8090"

// upCluster is `surge up --cluster`: every server and service a separate
// process, two of each service, until Ctrl-C or SIGTERM.
func upCluster(dir string, fresh bool, shards int, httpAddrs, level string, withJaeger bool) error {
	addrs := strings.Split(httpAddrs, ",")
	if len(addrs) != 2 {
		return fmt.Errorf("--http: --cluster wants two ingest addresses, comma separated, got %q", httpAddrs)
	}
	for _, a := range addrs {
		if _, port, err := net.SplitHostPort(a); err != nil || port == "0" {
			return fmt.Errorf("--http: --cluster wants two host:port addresses with fixed ports, got %q", a)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	logf := func(f string, a ...any) { fmt.Printf("surge: "+f+"\n", a...) }
	if err := chserver.EnsureInstalled(ctx, logf); err != nil {
		return err
	}
	if err := zookeeper.EnsureInstalled(ctx, logf); err != nil {
		return err
	}
	natsCmd, err := embeddedNATSServer()
	if err != nil {
		return err
	}
	// The service processes inherit the OTEL_* variables Jaeger sets;
	// it stops after they have drained and flushed their spans.
	var j *localJaeger
	if withJaeger {
		if j, err = startJaeger(ctx, logf); err != nil {
			return err
		}
		defer func() {
			if err := j.Stop(); err != nil {
				logf("%v", err)
			}
		}()
	}
	started := time.Now()
	c, err := stack.StartCluster(ctx, stack.ClusterOptions{
		Dir: dir, Fresh: fresh, Shards: shards, IngestAddrs: [2]string{addrs[0], addrs[1]},
		LogLevel: level, Logf: logf, NATSServer: natsCmd,
	})
	if err != nil {
		return err
	}
	info := c.Info()
	if err := stack.WriteInfo(dir, info); err != nil {
		fmt.Printf("surge: %v; `surge query` and `surge deadletter` will not find this cluster\n", err)
	}
	printClusterBanner(c, info, time.Since(started), j)

	<-ctx.Done()
	stop()

	fmt.Println("\nsurge: stopping: services (SIGTERM, they drain), then ClickHouse, ZooKeeper and NATS...")
	err = c.Stop()
	_ = stack.RemoveInfo(dir)
	if err != nil {
		return err
	}
	fmt.Println("surge: stopped cleanly; data kept in", dir, "(use --fresh to start empty)")
	return nil
}

// embeddedNATSServer is the command that runs a NATS node from this very
// binary (its nats-server subcommand), for stack.ClusterOptions.NATSServer.
func embeddedNATSServer() ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the surge binary to run the NATS nodes: %w", err)
	}
	return []string{exe, natsServerCommand}, nil
}

func printClusterBanner(c *stack.Cluster, info stack.Info, took time.Duration, j *localJaeger) {
	fmt.Printf(`
surge: cluster up in %s
  send events   curl -X POST %s/v1/events -H 'Content-Type: application/json' \
                  -d '[{"user_id":"u1","type":"page_view","properties":{"path":"/"}}]'
  ingest        %s
  query         go tool task query -- "SELECT type, count() FROM %s.events GROUP BY type"
  NATS          %s (3 nodes of the nats-server %s surge embeds, streams at 3 replicas; services log in as %s)
  ZooKeeper     %s
`, took.Round(time.Millisecond), info.IngestURL, strings.Join(info.IngestURLs, " "), info.Database,
		info.NATSURL, server.VERSION, info.NATSUser, info.ZooKeeper)
	for i, replicas := range info.ClickHouseReplicas {
		fmt.Printf("  ClickHouse    shard %d: %s (native)\n", i, strings.Join(replicas, " "))
	}
	names := make([]string, 0, len(info.PIDs))
	for n := range info.PIDs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, in := range c.Instances {
		fmt.Printf("  %-13s pid %-7d http://%s/metrics  log %s\n", in.Name, info.PIDs[in.Name], in.AdminAddr, in.LogPath)
	}
	var servers []string
	for _, n := range names {
		if _, service := info.Admin[n]; !service {
			servers = append(servers, fmt.Sprintf("%s=%d", n, info.PIDs[n]))
		}
	}
	fmt.Printf("  servers       %s\n", strings.Join(servers, " "))
	fmt.Print(j.banner())
	fmt.Println("\nPress Ctrl-C to stop.")
}
