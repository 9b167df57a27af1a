package stack

import (
	"context"
	"errors"
	"fmt"

	"github.com/surge-events/surge/pkg/testkit/chserver"
)

// KillReplica SIGKILLs the ClickHouse server of replica r of shard s and
// waits for it to exit; RestartReplica starts it again.
func (c *Cluster) KillReplica(s, r int) error {
	srv, err := c.replica(s, r)
	if err != nil {
		return err
	}
	if srv.PID() == 0 {
		return fmt.Errorf("clickhouse %d-%d is not running", s, r)
	}
	if err := srv.Kill(); err != nil {
		return fmt.Errorf("kill clickhouse %d-%d: %w", s, r, err)
	}
	return nil
}

// RestartReplica starts the ClickHouse server of replica r of shard s
// again and waits until it accepts connections. A replica that refuses to
// start because columns were added while it was down (ClickHouse 18.16
// takes at most two missed columns on its own), or that started without a
// table it has on disk (chserver.Server.Unattached), is started once more
// with force_restore_data, the recovery an operator runs
// (docs/TYPED-COLUMNS.md, "In brief").
func (c *Cluster) RestartReplica(ctx context.Context, s, r int) error {
	srv, err := c.replica(s, r)
	if err != nil {
		return err
	}
	err = srv.Start(ctx)
	if err == nil {
		missing, lerr := srv.Unattached(c.Database)
		if lerr != nil || len(missing) == 0 {
			return lerr
		}
		c.opts.Logf("clickhouse %d-%d: started without its tables %v; restarting it with force_restore_data", s, r, missing)
		if err := srv.Stop(); err != nil {
			return err
		}
	} else if !srv.StructureTooDifferent() {
		return err
	} else {
		c.opts.Logf("clickhouse %d-%d: columns were added while it was down; restarting it with force_restore_data", s, r)
	}
	if ferr := srv.ForceRestore(); ferr != nil {
		return errors.Join(err, ferr)
	}
	return srv.Start(ctx)
}

func (c *Cluster) replica(s, r int) (*chserver.Server, error) {
	if s < 0 || s >= len(c.ClickHouse.Shards) || r < 0 || r >= len(c.ClickHouse.Shards[s]) {
		return nil, fmt.Errorf("no clickhouse replica %d of shard %d", r, s)
	}
	return c.ClickHouse.Shards[s][r], nil
}
