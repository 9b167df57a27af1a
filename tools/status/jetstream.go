package status

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/services/partitioner"
	"github.com/surge-events/surge/services/sink"
)

// jsState is what JetStream says about the shards.
type jsState struct {
	events, batches map[int]Backlog
	// lastAck is when each shard's sink consumer last acked.
	lastAck map[int]*time.Time
	// leases maps <service>.shard.<k> to its holder.
	leases   map[string]string
	maxShard int
}

func (c *Collector) jetStream(ctx context.Context, r *Report) (*jsState, error) {
	st := &jsState{events: map[int]Backlog{}, batches: map[int]Backlog{}, lastAck: map[int]*time.Time{}, leases: map[string]string{}, maxShard: -1}
	for _, name := range []string{streams.Ingest, streams.Events, streams.Batches, streams.DeadLetter} {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		s, err := c.js.Stream(rctx, name)
		var info *jetstream.StreamInfo
		if err == nil {
			if name == streams.DeadLetter {
				info, err = s.Info(rctx, jetstream.WithSubjectFilter("deadletter.>"))
			} else {
				info = s.CachedInfo()
			}
		}
		cancel()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			r.Streams = append(r.Streams, Stream{Name: name, Missing: true})
			continue
		}
		if err != nil {
			r.Streams = append(r.Streams, Stream{Name: name, Unreadable: err.Error()})
			continue
		}
		r.Streams = append(r.Streams, streamOf(info))
		var err2 error
		switch name {
		case streams.Ingest:
			r.Ingest, err2 = c.ingestBacklog(ctx, s, info)
		case streams.Events:
			err2 = c.shardBacklogs(ctx, s, "events.shard.", false, st)
		case streams.Batches:
			err2 = c.shardBacklogs(ctx, s, "batches.shard.", true, st)
		case streams.DeadLetter:
			maps.Copy(r.DeadLetters, info.State.Subjects)
		}
		if err2 != nil {
			r.Streams[len(r.Streams)-1].Unreadable = err2.Error()
		}
	}
	if unreadable := func() bool {
		for _, s := range r.Streams {
			if s.Unreadable == "" {
				return false
			}
		}
		return true
	}(); unreadable {
		return nil, fmt.Errorf("no stream could be read: %s: %s", r.Streams[0].Name, r.Streams[0].Unreadable)
	}
	if err := c.leases(ctx, st); err != nil {
		r.LeasesUnreadable = err.Error()
		for _, svc := range []string{"batcher", "sink"} {
			r.Ownership[svc] = "unknown"
		}
		return st, nil
	}
	for _, svc := range []string{"batcher", "sink"} {
		r.Ownership[svc] = "static"
	}
	for key := range st.leases {
		svc, rest, _ := strings.Cut(key, ".")
		if svc == "members" {
			svc, _, _ = strings.Cut(rest, ".")
		} else if k, ok := shardOf(key, svc+".shard."); ok {
			st.maxShard = max(st.maxShard, k)
		}
		if _, known := r.Ownership[svc]; known {
			r.Ownership[svc] = "lease"
		}
	}
	return st, nil
}

func streamOf(info *jetstream.StreamInfo) Stream {
	s := Stream{
		Name: info.Config.Name, Messages: info.State.Msgs, Bytes: info.State.Bytes,
		MaxBytes: info.Config.MaxBytes, MaxMsgs: info.Config.MaxMsgs, Replicas: max(info.Config.Replicas, 1),
	}
	ci := info.Cluster
	if ci == nil {
		// A server without clustering holds its one replica.
		s.Current = 1
		return s
	}
	s.Leader = ci.Leader
	if ci.Leader != "" {
		s.Current = 1
	}
	for _, p := range ci.Replicas {
		switch {
		case p.Current && !p.Offline:
			s.Current++
		case p.Offline:
			s.Behind = append(s.Behind, p.Name+" (offline)")
		default:
			s.Behind = append(s.Behind, fmt.Sprintf("%s (%d behind)", p.Name, p.Lag))
		}
	}
	return s
}

// ingestBacklog is what the partitioners' consumers (one per tenant with
// work) have still to deliver or have acked, plus the messages of tenants
// no consumer reads yet (a partitioner makes a tenant's consumer when it
// finds its first message). INGEST is a work queue, yet its message count
// is not the backlog: a server killed between an ack and the removal can
// keep messages a consumer has acked (its ack floor past them), which
// nothing will deliver again. Without a consumer, every message waits.
func (c *Collector) ingestBacklog(ctx context.Context, s jetstream.Stream, info *jetstream.StreamInfo) (Backlog, error) {
	all, err := c.consumers(ctx, s)
	if err != nil {
		return Backlog{Pending: info.State.Msgs}, err
	}
	var consumers []*jetstream.ConsumerInfo
	for _, ci := range all {
		if ci.Name == partitioner.LegacyConsumerName || strings.HasPrefix(ci.Name, partitioner.ConsumerPrefix) {
			consumers = append(consumers, ci)
		}
	}
	if len(consumers) == 0 {
		b := Backlog{Pending: info.State.Msgs}
		if b.Pending > 0 && !info.State.FirstTime.IsZero() {
			t := info.State.FirstTime.UTC()
			b.Oldest = &t
		}
		return b, nil
	}
	var b Backlog
	floor := uint64(math.MaxUint64)
	read := map[string]bool{} // the consumers' names
	for _, ci := range consumers {
		read[ci.Name] = true
		b.Pending += ci.NumPending + uint64(max(ci.NumAckPending, 0))
		b.LastProgress = later(b.LastProgress, ci.AckFloor.Last)
		floor = min(floor, ci.AckFloor.Stream)
	}
	b.Consumer = consumers[0].Name
	if len(consumers) > 1 {
		b.Consumer = fmt.Sprintf("%s* (%d)", partitioner.ConsumerPrefix, len(consumers))
	}
	if b.Pending > 0 {
		if b.Oldest, err = c.oldest(ctx, s, floor+1, ">", streams.Ingest); err != nil {
			return b, err
		}
	}
	if !read[partitioner.LegacyConsumerName] && b.Pending < info.State.Msgs {
		unread, oldest, err := c.unreadTenants(ctx, s, read)
		if err != nil {
			return b, err
		}
		b.Pending += unread
		if oldest != nil && (b.Oldest == nil || oldest.Before(*b.Oldest)) {
			b.Oldest = oldest
		}
	}
	return b, nil
}

// unreadSubjectsLooked bounds the subjects whose first message the look
// reads to find the oldest message no consumer reads yet.
const unreadSubjectsLooked = 16

// unreadTenants counts the INGEST messages of tenants whose consumer is
// not among read, and finds the oldest of them (among the first
// unreadSubjectsLooked subjects).
func (c *Collector) unreadTenants(ctx context.Context, s jetstream.Stream, read map[string]bool) (uint64, *time.Time, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	info, err := s.Info(rctx, jetstream.WithSubjectFilter(">"))
	cancel()
	if err != nil {
		return 0, nil, fmt.Errorf("subjects of %s: %w", streams.Ingest, err)
	}
	var n uint64
	var subjects []string
	for subject, msgs := range info.State.Subjects {
		if t, ok := partitioner.TenantOf(subject); ok && msgs > 0 && !read[partitioner.ConsumerName(t)] {
			n += msgs
			subjects = append(subjects, subject)
		}
	}
	slices.Sort(subjects)
	var oldest *time.Time
	for _, subject := range subjects[:min(len(subjects), unreadSubjectsLooked)] {
		t, err := c.oldest(ctx, s, 1, subject, streams.Ingest)
		if err != nil {
			return n, oldest, err
		}
		if t != nil && (oldest == nil || t.Before(*oldest)) {
			oldest = t
		}
	}
	return n, oldest, nil
}

// oldest is the stream time of the first message of s on subject from
// sequence start on; nil when there is none. what names the backlog in
// an error.
func (c *Collector) oldest(ctx context.Context, s jetstream.Stream, start uint64, subject, what string) (*time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	msg, err := s.GetMsg(ctx, start, jetstream.WithGetMsgSubject(subject))
	switch {
	case err == nil:
		t := msg.Time.UTC()
		return &t, nil
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return nil, nil
	default:
		return nil, fmt.Errorf("oldest waiting message of %s: %w", what, err)
	}
}

// shardBacklogs reads, per shard subject (prefix<k>), what its consumer
// has still to deliver or have acked. EVENTS: the batcher reads each
// shard with an ordered consumer that a restart replaces, and the old one
// lingers until its inactivity threshold, so the least pending per
// subject is the batcher's. BATCHES: each shard's durable sink consumer.
func (c *Collector) shardBacklogs(ctx context.Context, s jetstream.Stream, prefix string, acked bool, st *jsState) error {
	consumers, err := c.consumers(ctx, s)
	if err != nil {
		return err
	}
	chosen := map[int]*jetstream.ConsumerInfo{}
	for _, ci := range consumers {
		subjects := append([]string{ci.Config.FilterSubject}, ci.Config.FilterSubjects...)
		for _, subj := range subjects {
			k, ok := shardOf(subj, prefix)
			if !ok {
				continue
			}
			st.maxShard = max(st.maxShard, k)
			prev, seen := chosen[k]
			switch {
			case !seen:
				chosen[k] = ci
			case acked && ci.Name == sink.ConsumerName(k):
				chosen[k] = ci
			case !acked && ci.NumPending < prev.NumPending:
				chosen[k] = ci
			}
		}
	}
	for k, ci := range chosen {
		b := Backlog{Consumer: ci.Name, Pending: ci.NumPending + uint64(max(ci.NumAckPending, 0))}
		start := ci.Delivered.Stream + 1
		b.LastProgress = later(nil, ci.Delivered.Last)
		if acked {
			start = ci.AckFloor.Stream + 1
			b.LastProgress = later(nil, ci.AckFloor.Last)
			st.lastAck[k] = b.LastProgress
		}
		if b.Pending > 0 {
			subject := prefix + strconv.Itoa(k)
			if b.Oldest, err = c.oldest(ctx, s, start, subject, subject); err != nil {
				return err
			}
		}
		if acked {
			st.batches[k] = b
		} else {
			st.events[k] = b
		}
	}
	return nil
}

func (c *Collector) consumers(ctx context.Context, s jetstream.Stream) ([]*jetstream.ConsumerInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	lister := s.ListConsumers(rctx)
	var out []*jetstream.ConsumerInfo
	for ci := range lister.Info() {
		out = append(out, ci)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("consumers of %s: %w", s.CachedInfo().Config.Name, err)
	}
	return out, nil
}

func shardOf(subject, prefix string) (int, bool) {
	rest, ok := strings.CutPrefix(subject, prefix)
	if !ok {
		return 0, false
	}
	k, err := strconv.Atoi(rest)
	return k, err == nil && k >= 0
}

func later(a, b *time.Time) *time.Time {
	if b == nil || (a != nil && !b.After(*a)) {
		return a
	}
	t := b.UTC()
	return &t
}
