package chaos

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/surge-events/surge/pkg/lease"
)

// killLeader SIGKILLs the node leading stream, waits for a new leader and
// restarts the node after 1-3 s.
func (ch *chaosCluster) killLeader(ctx context.Context, rep *faultReport, stream string) error {
	var leader int
	err := poll(ctx, electionBound, func() error {
		var err error
		leader, err = ch.streamLeader(ctx, stream)
		return err
	})
	if err != nil {
		return err
	}
	rep.target = ch.c.NATSName(leader)
	if err := ch.c.KillNATS(leader); err != nil {
		return err
	}
	killed := time.Now()
	var next int
	err = poll(ctx, 2*electionBound, func() error {
		i, err := ch.streamLeader(ctx, stream)
		if err == nil && i == leader {
			return errors.New("still the old leader")
		}
		next = i
		return err
	})
	elected := time.Since(killed)
	if err != nil {
		elected = -1
	}
	rep.bounded["new "+stream+" leader"] = measure{elected, electionBound}
	rep.notes = append(rep.notes, fmt.Sprintf("%s leads %s after %.1fs", ch.c.NATSName(max(next, 0)), stream, elected.Seconds()))
	if err := sleep(ctx, time.Second+randDuration(ch.rng, 2*time.Second)); err != nil {
		return err
	}
	restarted := time.Now()
	if err := ch.c.RestartNATS(ctx, leader); err != nil {
		return err
	}
	rep.notes = append(rep.notes, fmt.Sprintf("%s back and current in %.1fs", rep.target, time.Since(restarted).Seconds()))
	return nil
}

// streamLeader asks for stream's leader, waiting at most 500 ms for the
// answer: while the stream has none the request goes unanswered, and the
// election's time is measured by these polls.
func (ch *chaosCluster) streamLeader(ctx context.Context, stream string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	return ch.c.StreamLeader(ctx, ch.js, stream)
}

// killLeasesLeader SIGKILLs the node leading the lease bucket's stream:
// no lease can be renewed or taken until the election ends. It waits
// until every shard of the batchers and sinks has an owner again and
// notes the owner changes meanwhile.
func (ch *chaosCluster) killLeasesLeader(ctx context.Context, rep *faultReport) error {
	start := time.Now()
	if err := ch.killLeader(ctx, rep, "KV_"+lease.Bucket); err != nil {
		return err
	}
	err := poll(ctx, takeoverBound(ch.leases.ttl), func() error {
		for _, service := range []string{"batcher", "sink"} {
			if n := ch.leases.held(service); n < shards {
				return fmt.Errorf("%d %s shards have an owner", n, service)
			}
		}
		return nil
	})
	took := time.Since(start)
	if err != nil {
		took = -1
	}
	rep.bounded["every shard owned after the restart"] = measure{took, takeoverBound(ch.leases.ttl)}
	ranOut := 0
	for _, in := range ch.c.Instances {
		if in.Service == "batcher" || in.Service == "sink" {
			n, err := countLines(in.LogPath, msgRanOut, unix(start))
			if err != nil {
				return err
			}
			ranOut += n
		}
	}
	rep.notes = append(rep.notes, fmt.Sprintf("%d owner changes and %d leases run out meanwhile", ch.leases.changesSince(start), ranOut))
	return nil
}
