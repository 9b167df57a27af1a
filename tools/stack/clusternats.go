package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/testkit/natscluster"
	"github.com/surge-events/surge/pkg/testkit/ports"
	"github.com/surge-events/surge/pkg/testkit/proc"
)

// natsNode is one nats-server process of the cluster.
type natsNode struct {
	name, dir               string
	clientPort, monitorPort int
	proc                    *proc.Process
}

// natsConfig is a cluster node's configuration, with the local stack's
// logins.
func (nd *natsNode) config(routePort int, routes []string) string {
	quoted := make([]string, len(routes))
	for i, r := range routes {
		quoted[i] = strconv.Quote(r)
	}
	return fmt.Sprintf(`server_name: %s
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: 16MB
max_pending: 64MB
jetstream {
  store_dir: %q
  max_memory_store: 256MB
  max_file_store: 8GB
}
cluster {
  name: surge-local
  listen: "127.0.0.1:%d"
  routes: [%s]
}
authorization {
  users = [
    { user: %q, password: %q }
    {
      user: %q, password: %q
      permissions: {
        publish: { allow: ["surge.in.%s", "surge.in.%s.>"] }
        subscribe: { allow: ["_INBOX_%s.>"] }
      }
    }
  ]
}
`, nd.name, nd.clientPort, nd.monitorPort, filepath.Join(nd.dir, "store"), routePort, strings.Join(quoted, ", "),
		ServiceUser, ServicePassword, DemoProducer.Name, DemoProducer.Password,
		DemoProducer.Tenant, DemoProducer.Tenant, DemoProducer.Tenant)
}

// natsCommand is the command running the node whose configuration is conf.
func (c *Cluster) natsCommand(conf string) *exec.Cmd {
	args := append(slices.Clone(c.natsServer[1:]), "-c", conf)
	return exec.Command(c.natsServer[0], args...)
}

func (c *Cluster) startNATS(ctx context.Context) error {
	const n = 3
	free, err := ports.Free(3 * n)
	if err != nil {
		return err
	}
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", free[3*i+1]))
	}
	for i := range n {
		nd := &natsNode{
			name:        fmt.Sprintf("nats-%d", i),
			dir:         filepath.Join(c.opts.Dir, "nats", fmt.Sprintf("nats-%d", i)),
			clientPort:  free[3*i],
			monitorPort: free[3*i+2],
		}
		if err := os.MkdirAll(filepath.Join(nd.dir, "store"), 0o755); err != nil {
			return fmt.Errorf("nats store: %w", err)
		}
		conf := filepath.Join(nd.dir, "nats.conf")
		if err := os.WriteFile(conf, []byte(nd.config(free[3*i+1], routes)), 0o644); err != nil {
			return fmt.Errorf("nats config: %w", err)
		}
		p, err := spawn(c.natsCommand(conf), nd.dir, filepath.Join(nd.dir, "nats.log"), nil)
		if err != nil {
			return fmt.Errorf("start %s: %w", nd.name, err)
		}
		nd.proc = p
		c.nats = append(c.nats, nd)
	}
	for _, nd := range c.nats {
		url := fmt.Sprintf("http://127.0.0.1:%d/healthz", nd.monitorPort)
		if err := waitHTTP(ctx, url, nd.proc, natscluster.ReadyTimeout); err != nil {
			log := filepath.Join(nd.dir, "nats.log")
			return fmt.Errorf("%s: %w; log %s:\n%s", nd.name, err, log, logTail(log, 10))
		}
	}
	return nil
}

// NATSURLs are the client URLs of the three nodes.
func (c *Cluster) NATSURLs() []string {
	out := make([]string, len(c.nats))
	for i, nd := range c.nats {
		out[i] = fmt.Sprintf("nats://127.0.0.1:%d", nd.clientPort)
	}
	return out
}

// NATSName is the server name of NATS node i ("nats-<i>").
func (c *Cluster) NATSName(i int) string { return c.nats[i].name }

// KillNATS SIGKILLs NATS node i and waits for it to exit.
func (c *Cluster) KillNATS(i int) error {
	if i < 0 || i >= len(c.nats) {
		return fmt.Errorf("no NATS node %d", i)
	}
	nd := c.nats[i]
	c.mu.Lock()
	p := nd.proc
	c.mu.Unlock()
	return p.Kill()
}

// RestartNATS starts NATS node i again on its ports and store and waits
// until it is healthy (JetStream current with its peers).
func (c *Cluster) RestartNATS(ctx context.Context, i int) error {
	if i < 0 || i >= len(c.nats) {
		return fmt.Errorf("no NATS node %d", i)
	}
	nd := c.nats[i]
	c.mu.Lock()
	p := nd.proc
	c.mu.Unlock()
	if p.Running() {
		return fmt.Errorf("%s runs already (pid %d)", nd.name, p.PID())
	}
	p, err := spawn(c.natsCommand(filepath.Join(nd.dir, "nats.conf")), nd.dir, filepath.Join(nd.dir, "nats.log"), nil)
	if err != nil {
		return fmt.Errorf("start %s: %w", nd.name, err)
	}
	c.mu.Lock()
	nd.proc = p
	c.mu.Unlock()
	if err := waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/healthz", nd.monitorPort), p, natscluster.ReadyTimeout); err != nil {
		log := filepath.Join(nd.dir, "nats.log")
		return fmt.Errorf("%s: %w; log %s:\n%s", nd.name, err, log, logTail(log, 10))
	}
	return nil
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
var ErrNoLeader = errors.New("no leader")

// StreamLeader is the index of the NATS node leading stream, asked
// through js; ErrNoLeader while an election runs.
func (c *Cluster) StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, fmt.Errorf("stream %s: %w (%w)", stream, ErrNoLeader, err)
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("stream %s: %w", stream, ErrNoLeader)
	}
	return c.natsIndex(info.Cluster.Leader)
}

// natsIndex is the index of the node named name.
func (c *Cluster) natsIndex(name string) (int, error) {
	for i, nd := range c.nats {
		if nd.name == name {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%q is no node of the cluster", name)
}
