package chaos

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/surge-events/surge/tools/stack"
)

// liveInstances are the running instances of service.
func (ch *chaosCluster) liveInstances(service string) []*stack.Instance {
	var out []*stack.Instance
	for _, in := range ch.c.Instances {
		if in.Service == service && in.Running() {
			out = append(out, in)
		}
	}
	return out
}

// pick draws one of the live instances of service; for a leased service
// one that holds a shard, so the fault moves some.
func (ch *chaosCluster) pick(service string) (*stack.Instance, string, error) {
	live := ch.liveInstances(service)
	ch.rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	for _, in := range live {
		if service != "batcher" && service != "sink" {
			return in, "", nil
		}
		id, err := leaseInstance(in.LogPath)
		if err != nil {
			return nil, "", err
		}
		if id != "" && len(ch.leases.ownedBy(service, id)) > 0 {
			return in, id, nil
		}
	}
	return nil, "", fmt.Errorf("no live %s holds a shard", service)
}

// killRestart SIGKILLs an instance of service and restarts it after
// 0.2-1.5 s; for a batcher or sink it then waits until each of its shards
// has another owner.
func (ch *chaosCluster) killRestart(ctx context.Context, rep *faultReport, service string) error {
	h, err := ch.target(rep, service)
	if err != nil {
		return err
	}
	in := h.in
	if err := ch.c.KillInstance(in.Name); err != nil {
		return err
	}
	killed := time.Now()
	ch.ends[in.Name] = append(ch.ends[in.Name], runEnd{at: unix(killed), killed: true})
	if err := sleep(ctx, 200*time.Millisecond+randDuration(ch.rng, 1300*time.Millisecond)); err != nil {
		return err
	}
	restarted := time.Now()
	if err := ch.c.RestartInstance(ctx, in.Name); err != nil {
		return err
	}
	rep.bounded["restart to ready"] = measure{time.Since(restarted), restartBound}
	ch.waitTakeovers(ctx, rep, h, killed)
	return nil
}

// hit is the instance a fault hits: its service, its lease id and the
// shards it held.
type hit struct {
	in          *stack.Instance
	service, id string
	owned       []int
}

// target draws the instance of service a fault hits (see pick) and names
// it in rep.
func (ch *chaosCluster) target(rep *faultReport, service string) (hit, error) {
	in, id, err := ch.pick(service)
	if err != nil {
		return hit{}, err
	}
	h := hit{in: in, service: service, id: id, owned: ch.leases.ownedBy(service, id)}
	rep.target = in.Name
	if len(h.owned) > 0 {
		rep.notes = append(rep.notes, fmt.Sprintf("held shards %v as %s", h.owned, id))
	}
	return h, nil
}

// waitTakeovers waits until every shard h held has another owner, at
// most takeoverBound plus a margin, and records each one's time from
// since (-1 for a shard that never moved).
func (ch *chaosCluster) waitTakeovers(ctx context.Context, rep *faultReport, h hit, since time.Time) {
	service, id, owned := h.service, h.id, h.owned
	if len(owned) == 0 {
		return
	}
	err := poll(ctx, takeoverBound(ch.leases.ttl)+10*time.Second, func() error {
		for _, k := range owned {
			if _, at := ch.leases.movedFrom(service, k, id); at.IsZero() {
				return fmt.Errorf("shard %d still with %s", k, id)
			}
		}
		return nil
	})
	if err != nil {
		rep.notes = append(rep.notes, err.Error())
	}
	for _, k := range owned {
		owner, at := ch.leases.movedFrom(service, k, id)
		rep.takeovers[k] = -1
		if !at.IsZero() {
			rep.takeovers[k] = at.Sub(since)
			rep.notes = append(rep.notes, fmt.Sprintf("shard %d to %s", k, owner))
		}
	}
}

// stopForGood SIGTERMs a batcher or sink (of a service with at least two
// live instances) and waits until each of its shards has another owner.
func (ch *chaosCluster) stopForGood(ctx context.Context, rep *faultReport) error {
	h, err := ch.spareTarget(ctx, rep)
	if err != nil {
		return err
	}
	in := h.in
	stopped := time.Now()
	if err := ch.c.StopInstance(in.Name); err != nil {
		return err
	}
	ch.ends[in.Name] = append(ch.ends[in.Name], runEnd{at: unix(time.Now())})
	rep.notes = append(rep.notes, fmt.Sprintf("drained and exited in %.1fs", time.Since(stopped).Seconds()))
	ch.waitTakeovers(ctx, rep, h, stopped)
	return nil
}

// spareTarget is target in the batcher or the sink service, drawn among
// those with at least two live instances, so that another instance can
// take the shards of the one a fault stops or pauses for good. When each
// runs one (a long run stopped the others), it adds an instance first.
func (ch *chaosCluster) spareTarget(ctx context.Context, rep *faultReport) (hit, error) {
	services := []string{"batcher", "sink"}
	ch.rng.Shuffle(len(services), func(i, j int) { services[i], services[j] = services[j], services[i] })
	for _, service := range services {
		if len(ch.liveInstances(service)) >= 2 {
			return ch.target(rep, service)
		}
	}
	rep.notes = append(rep.notes, "one added first")
	if err := ch.addInstance(ctx, rep); err != nil {
		return hit{}, err
	}
	return ch.spareTarget(ctx, rep)
}

// addInstance adds a batcher or sink and waits until it holds its share
// of the shards.
func (ch *chaosCluster) addInstance(ctx context.Context, rep *faultReport) error {
	service := []string{"batcher", "sink"}[ch.rng.IntN(2)]
	start := time.Now()
	in, err := ch.c.AddInstance(ctx, service)
	if err != nil {
		return err
	}
	rep.target = in.Name
	ready := time.Now()
	rep.bounded["start to ready"] = measure{ready.Sub(start), restartBound}
	share := shards / len(ch.liveInstances(service))
	var id string
	err = poll(ctx, takeoverBound(ch.leases.ttl)+10*time.Second, func() error {
		// Ready comes a moment before the instance logs its lease id.
		if id == "" {
			var err error
			if id, err = leaseInstance(in.LogPath); err != nil {
				return err
			}
			if id == "" {
				return fmt.Errorf("%s has not logged its lease instance id", in.Name)
			}
		}
		if n := len(ch.leases.ownedBy(service, id)); n < share {
			return fmt.Errorf("%s holds %d shards of its %d", in.Name, n, share)
		}
		return nil
	})
	took := time.Since(ready)
	if err != nil {
		took = -1
		rep.notes = append(rep.notes, err.Error())
	}
	rep.bounded[fmt.Sprintf("holds its share (%d shards) after ready", share)] = measure{took, takeoverBound(ch.leases.ttl)}
	rep.notes = append(rep.notes, fmt.Sprintf("holds %v as %s", ch.leases.ownedBy(service, id), id))
	return nil
}

// freeze SIGSTOPs a batcher or sink holding shards (of a service with at
// least two live instances), waits until each of them has another owner
// (its leases ran out), then SIGCONTs it: a paused owner that resumes
// must not publish or insert for the shards it lost beyond the one output
// it had on its way (see overlaps).
func (ch *chaosCluster) freeze(ctx context.Context, rep *faultReport) error {
	h, err := ch.spareTarget(ctx, rep)
	if err != nil {
		return err
	}
	in := h.in
	pid := in.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP %s: %w", in.Name, err)
	}
	if err := poll(ctx, 5*time.Second, func() error {
		ok, err := stopped(pid)
		if err == nil && !ok {
			err = errors.New("not every thread stopped yet")
		}
		return err
	}); err != nil {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		return fmt.Errorf("freeze %s: %w", in.Name, err)
	}
	frozen := time.Now()
	ch.waitTakeovers(ctx, rep, h, frozen)
	// Before the signal: the resumed process logs within milliseconds.
	thawed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		return fmt.Errorf("SIGCONT %s: %w", in.Name, err)
	}
	ch.frozen[in.Name] = append(ch.frozen[in.Name], pause{run: len(ch.ends[in.Name]), from: unix(frozen), to: unix(thawed)})
	rep.notes = append(rep.notes, fmt.Sprintf("resumed after %.1fs", thawed.Sub(frozen).Seconds()))
	return nil
}
