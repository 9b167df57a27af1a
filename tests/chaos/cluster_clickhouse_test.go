package chaos

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/testkit/chserver"
)

// killReplica SIGKILLs a ClickHouse replica, measures how soon rows of
// every logical shard it holds land again (on its peer: the sink shards
// that wrote to it fail over), and restarts it after 2-4 s.
func (ch *chaosCluster) killReplica(ctx context.Context, rep *faultReport) error {
	s := ch.rng.IntN(len(ch.c.ClickHouse.Shards))
	r, err := ch.busyReplica(ctx, s)
	if err != nil {
		return err
	}
	peer := ch.c.ClickHouse.Shards[s][1-r]
	rep.target = fmt.Sprintf("clickhouse-%d-%d", s, r)
	before, err := shardRows(peer.HTTPAddr())
	if err != nil {
		return err
	}
	if err := ch.c.KillReplica(s, r); err != nil {
		return err
	}
	killed := time.Now()
	restartAt := killed.Add(2*time.Second + randDuration(ch.rng, 2*time.Second))
	restarted := false
	var back time.Duration // from the kill to the replica's port accepting
	restart := func() error {
		start := time.Now()
		if err := ch.c.RestartReplica(ctx, s, r); err != nil {
			return err
		}
		restarted = true
		back = time.Since(killed)
		rep.bounded["replica restart"] = measure{time.Since(start), restartBound}
		return nil
	}
	// A shard lands again on the other replica within landingBound, or,
	// when its batch may have landed on the killed replica alone (an
	// insert under way at the kill), within landingAfterRestart of the
	// killed replica's return: only it can tell.
	bound := func() time.Duration { return max(landingBound, back+landingAfterRestart) }
	// The logical shards of ClickHouse shard s: k % shards of the sink.
	landed := map[int]time.Duration{}
	var restartErr error
	_ = poll(ctx, landingBound+restartBound, func() error {
		if !restarted && time.Now().After(restartAt) {
			if restartErr = restart(); restartErr != nil {
				return nil // ends the poll
			}
		}
		now, err := shardRows(peer.HTTPAddr())
		if err != nil {
			return err
		}
		for k := s; k < shards; k += len(ch.c.ClickHouse.Shards) {
			if _, ok := landed[k]; !ok && now[k] > before[k] {
				landed[k] = time.Since(killed)
			}
		}
		if len(landed) < shards/len(ch.c.ClickHouse.Shards) && (!restarted || time.Since(killed) < bound()) {
			return fmt.Errorf("rows of shards %v only landed on clickhouse-%d-%d", slices.Sorted(maps.Keys(landed)), s, 1-r)
		}
		return nil
	})
	if restartErr != nil {
		return restartErr
	}
	for k := s; k < shards; k += len(ch.c.ClickHouse.Shards) {
		d, ok := landed[k]
		if !ok {
			d = -1
		}
		rep.bounded[fmt.Sprintf("shard %d lands on clickhouse-%d-%d", k, s, 1-r)] = measure{d, bound()}
	}
	if !restarted {
		if err := sleep(ctx, time.Until(restartAt)); err != nil {
			return err
		}
		return restart()
	}
	return nil
}

// busyReplica is the replica of ClickHouse shard s that took more INSERT
// queries over one second (a sink shard writes to one replica until it
// fails), so that killing it makes sink shards fail over; a random one
// when neither took any.
func (ch *chaosCluster) busyReplica(ctx context.Context, s int) (int, error) {
	inserts := func() ([2]uint64, error) {
		var out [2]uint64
		for r, srv := range ch.c.ClickHouse.Shards[s] {
			v, err := chserver.Query(srv.HTTPAddr(), "SELECT value FROM system.events WHERE event = 'InsertQuery'")
			if err != nil {
				return out, err
			}
			if v = strings.TrimSpace(v); v != "" {
				if out[r], err = strconv.ParseUint(v, 10, 64); err != nil {
					return out, fmt.Errorf("InsertQuery %q: %w", v, err)
				}
			}
		}
		return out, nil
	}
	before, err := inserts()
	if err != nil {
		return 0, err
	}
	if err := sleep(ctx, time.Second); err != nil {
		return 0, err
	}
	after, err := inserts()
	if err != nil {
		return 0, err
	}
	d0, d1 := after[0]-before[0], after[1]-before[1]
	switch {
	case d0 > d1:
		return 0, nil
	case d1 > d0:
		return 1, nil
	}
	return ch.rng.IntN(2), nil
}

// shardRows is count() of events_local per logical shard on the server at
// addr.
func shardRows(addr string) (map[int]uint64, error) {
	out, err := chserver.Query(addr, "SELECT shard, count() FROM surge.events_local GROUP BY shard FORMAT TabSeparated")
	if err != nil {
		return nil, err
	}
	rows := map[int]uint64{}
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var k int
		var n uint64
		if _, err := fmt.Sscan(line, &k, &n); err != nil {
			return nil, fmt.Errorf("rows per shard: %q: %w", line, err)
		}
		rows[k] = n
	}
	return rows, nil
}
