package stack

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/testkit/natscluster"
)

// startNATS runs the cluster's three NATS nodes with natscluster, with
// the local stack's limits and logins (the services' user and the demo
// producer, who may publish to its tenant's subjects only).
func (c *Cluster) startNATS(ctx context.Context) error {
	nodes, err := natscluster.Launch(ctx, natscluster.Options{
		Nodes:      3,
		Dir:        filepath.Join(c.opts.Dir, "nats"),
		Name:       "surge-local",
		NodePrefix: "nats-",
		Command:    c.natsServer,
		MaxPayload: "16MB", MaxPending: "64MB", MaxMemoryStore: "256MB", MaxFileStore: "8GB",
		Users: []natscluster.User{
			{Name: ServiceUser, Password: ServicePassword},
			{
				Name: DemoProducer.Name, Password: DemoProducer.Password,
				Publish:   []string{"surge.in." + DemoProducer.Tenant, "surge.in." + DemoProducer.Tenant + ".>"},
				Subscribe: []string{"_INBOX_" + DemoProducer.Tenant + ".>"},
			},
		},
		StopTimeout: ClusterStopTimeout,
	})
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	c.nats = nodes
	return nil
}

// NATSURLs are the client URLs of the three nodes.
func (c *Cluster) NATSURLs() []string { return strings.Split(c.nats.URLs(), ",") }

// NATSName is the server name of NATS node i ("nats-<i>").
func (c *Cluster) NATSName(i int) string { return c.nats.Name(i) }

// natsNode checks that the cluster has NATS node i.
func (c *Cluster) natsNode(i int) error {
	if c.nats == nil || i < 0 || i >= c.nats.N() {
		return fmt.Errorf("no NATS node %d", i)
	}
	return nil
}

// KillNATS SIGKILLs NATS node i and waits for it to exit.
func (c *Cluster) KillNATS(i int) error {
	if err := c.natsNode(i); err != nil {
		return err
	}
	return c.nats.Kill(i)
}

// RestartNATS starts NATS node i again on its ports and store and waits
// until it is healthy (JetStream current with its peers).
func (c *Cluster) RestartNATS(ctx context.Context, i int) error {
	if err := c.natsNode(i); err != nil {
		return err
	}
	return c.nats.RestartContext(ctx, i)
}

// Connect opens a client connection to the NATS cluster as the services'
// user, reconnecting for ever.
func (c *Cluster) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect(strings.Join(c.NATSURLs(), ","), nats.Name(name), nats.UserInfo(ServiceUser, ServicePassword),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("connect to the cluster: %w", err)
	}
	return nc, nil
}

// ErrNoLeader says a stream has no leader now.
var ErrNoLeader = natscluster.ErrNoLeader

// StreamLeader is the index of the NATS node leading stream, asked
// through js; ErrNoLeader while an election runs.
func (c *Cluster) StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	return c.nats.StreamLeaderVia(ctx, js, stream)
}
