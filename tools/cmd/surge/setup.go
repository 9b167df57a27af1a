package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/surge-events/surge/pkg/testkit/chserver"
	"github.com/surge-events/surge/pkg/testkit/zookeeper"
)

// setup installs what the tests need and Go cannot fetch: clickhouse-server,
// zookeeper (Debian's package with java, for replicated ClickHouse),
// mosquitto_pub (Debian's mosquitto-clients, which TestProducers drives)
// and node with npm (Debian's nodejs and npm, which run the analytics
// SDKs in tests/sdk). The nats CLI the tests build themselves with go install.
func setup(ctx context.Context) error {
	logf := func(format string, a ...any) { fmt.Printf("surge: "+format+"\n", a...) }
	if err := chserver.EnsureInstalled(ctx, logf); err != nil {
		return err
	}
	if err := zookeeper.EnsureInstalled(ctx, logf); err != nil {
		return err
	}
	for _, tool := range []struct {
		binaries []string
		packages []string
	}{
		{[]string{"mosquitto_pub"}, []string{"mosquitto-clients"}},
		{[]string{"node", "npm"}, []string{"nodejs", "npm"}},
	} {
		if err := aptInstall(ctx, logf, tool.binaries, tool.packages); err != nil {
			return err
		}
	}
	return nil
}

// aptInstall installs Debian packages with apt-get unless every binary is
// already on the PATH.
func aptInstall(ctx context.Context, logf func(string, ...any), binaries, packages []string) error {
	missing := false
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	list := strings.Join(packages, " ")
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fmt.Errorf("%s missing: run `sudo apt-get install -y %s` and try again", strings.Join(binaries, " or "), list)
	}
	logf("installing %s with apt-get", list)
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq"}, packages...)} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", args[0], err, out)
		}
	}
	return nil
}
