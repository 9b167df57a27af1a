package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
)

// setup installs what the tests need and Go cannot fetch: clickhouse-server,
// zookeeper (Debian's package with java, for replicated ClickHouse) and
// mosquitto_pub (Debian's mosquitto-clients, which TestProducers drives).
// The nats CLI the tests build themselves with go install.
func setup(ctx context.Context) error {
	logf := func(format string, a ...any) { fmt.Printf("surge: "+format+"\n", a...) }
	if err := chserver.EnsureInstalled(ctx, logf); err != nil {
		return err
	}
	if err := zookeeper.EnsureInstalled(ctx, logf); err != nil {
		return err
	}
	if _, err := exec.LookPath("mosquitto_pub"); err == nil {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fmt.Errorf("mosquitto_pub is missing: run `sudo apt-get install -y mosquitto-clients` and try again")
	}
	logf("installing mosquitto-clients with apt-get")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "mosquitto-clients"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, out)
		}
	}
	return nil
}
