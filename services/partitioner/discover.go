package partitioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/streams"
)

// Discovery finds the tenants with work: it reads how many messages INGEST
// holds on each subject (one stream info request with a subject filter,
// answered from the stream's subject index, not by reading messages),
// makes the consumer of each tenant it does not know yet and turns the
// tenants with messages hot. It runs every info_interval and, when a
// worker finds no tenant with work, at once (at most one round every
// fetch_max_wait/2). So a new tenant's first request waits at most
// info_interval (2 s by default) while other tenants keep the workers
// busy, plus one round of turns, and about fetch_max_wait (+ the round's
// request) when they are idle.

// discoverAPI is the JetStream API request of a stream's info.
const discoverAPI = "$JS.API.STREAM.INFO."

// subjectsInfo is the part of the server's stream info answer discovery
// reads.
type subjectsInfo struct {
	State struct {
		Subjects map[string]uint64 `json:"subjects"`
	} `json:"state"`
	// Total is the number of subjects; the server answers at most a page
	// of them (100,000).
	Total int                 `json:"total"`
	Error *jetstream.APIError `json:"error"`
}

// tenantCounts reads the number of INGEST messages of each tenant:
// waiting, or delivered and not yet acked. It reads one page of subjects
// (the server's page is 100,000 subjects, the subjects in sorted order),
// which bounds the answer; should INGEST hold more subjects than that, the
// tenants past the page are found once the first ones have drained, and
// the workers' long polls of recent tenants go on meanwhile.
func (src *source) tenantCounts(ctx context.Context) (map[string]uint64, error) {
	req, err := json.Marshal(struct {
		Filter string `json:"subjects_filter"`
	}{">"})
	if err != nil {
		return nil, err
	}
	msg, err := src.js.Conn().RequestWithContext(ctx, discoverAPI+streams.Ingest, req)
	if err != nil {
		return nil, fmt.Errorf("subjects of %s: %w", streams.Ingest, err)
	}
	var info subjectsInfo
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		return nil, fmt.Errorf("subjects of %s: %w", streams.Ingest, err)
	}
	if info.Error != nil {
		return nil, fmt.Errorf("subjects of %s: %w", streams.Ingest, info.Error)
	}
	if info.Total > len(info.State.Subjects) && !src.truncated {
		src.truncated = true
		src.logger.Warn("INGEST holds more subjects than one discovery reads; the tenants past them are found as the first drain",
			zap.Int("subjects", info.Total), zap.Int("read", len(info.State.Subjects)))
	}
	counts := make(map[string]uint64)
	for subject, n := range info.State.Subjects {
		if t, ok := TenantOf(subject); ok && n > 0 {
			counts[t] += n
		}
	}
	return counts, nil
}

// discover runs one discovery round. It fails only when INGEST's subjects
// cannot be read; a tenant whose consumer the server refuses is on /readyz
// and tried again next round, the others go on.
func (src *source) discover(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, apiTimeout)
	counts, err := src.tenantCounts(rctx)
	cancel()
	if err != nil {
		return err
	}
	// A stable order: the tenants a round makes first are the same each
	// time, should the round be cut short.
	tenants := make([]string, 0, len(counts))
	for t := range counts {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	src.forgetRefused(counts)
	for _, t := range tenants {
		if ctx.Err() != nil {
			return nil
		}
		if !src.sched.known(t) {
			if err := src.create(ctx, t); err != nil {
				src.logger.Warn("create consumer", zap.String("consumer", ConsumerName(t)), zap.String("tenant", t), zap.Error(err))
				continue
			}
		}
		// Messages wait, and no fetch has brought any of them for the
		// stall timeout while other tenants flow (the input's watchdog
		// sees their progress): the consumer is made again. While the
		// partitioner holds back nothing is fetched, which is no fault of
		// the consumer: the wait counts from the gate's opening.
		if waited := min(src.sched.pending(t, counts[t]), src.s.gate.openFor()); waited >= src.cfg.StallTimeout {
			why := "tenant stalled"
			if err := src.recreate(ctx, t, why, src.sched.consumer(t)); err != nil {
				src.logger.Warn("repair consumer", zap.String("tenant", t), zap.String("why", why), zap.Error(err))
			}
		}
	}
	src.sched.backlogs(counts)
	return nil
}

// runDiscovery runs discovery rounds every info_interval, and sooner when
// a worker asks (at most one round every fetch_max_wait/2), until ctx
// ends.
func (src *source) runDiscovery(ctx context.Context) {
	t := time.NewTicker(src.cfg.InfoInterval)
	defer t.Stop()
	gap := src.cfg.FetchMaxWait / 2
	var last time.Time // the last round's start
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-src.sched.kick:
			// Idle workers ask every time they look: one round per gap
			// answers them all.
			if wait := gap - time.Since(last); wait > 0 {
				timer := time.NewTimer(wait)
				select {
				case <-ctx.Done():
				case <-timer.C:
				}
				timer.Stop()
			}
		}
		last = time.Now()
		if err := src.discover(ctx); err != nil && ctx.Err() == nil {
			failures++
			if failures&(failures-1) == 0 { // the 1st, 2nd, 4th... in a row
				src.logger.Warn("discover tenants", zap.Int("failures", failures), zap.Error(err))
			}
		} else {
			failures = 0
		}
	}
}

// open readies INGEST for the tenants' consumers: it removes the acked
// messages left behind, deletes the shared consumer of older partitioners
// and runs the first discovery round.
func (src *source) open(ctx context.Context) error {
	// A failure leaves the acked messages where they are, which only
	// costs stream space: say so and go on.
	if n, err := src.removeAcked(ctx); err != nil {
		src.logger.Warn("remove acked messages", zap.String("stream", streams.Ingest), zap.Error(err))
	} else if n > 0 {
		src.logger.Info("removed acked messages", zap.String("stream", streams.Ingest), zap.Uint64("messages", n))
	}
	dctx, cancel := context.WithTimeout(ctx, apiTimeout)
	err := src.deleteLegacy(dctx)
	cancel()
	if err != nil {
		return err
	}
	return src.discover(ctx)
}

// lag is what the tenants' consumers have still to deliver or have acked.
type lag struct {
	pending, ackPending uint64
	tenants             []tenantLag // every tenant with some
}

type tenantLag struct {
	tenant string
	n      uint64 // pending and ack pending
}

// lag reads the partitioners' consumers of INGEST, every tenant's: the
// server answers their list in pages of 256.
func (src *source) lag(ctx context.Context) (lag, error) {
	var l lag
	st, err := src.js.Stream(ctx, streams.Ingest)
	if err != nil {
		return l, fmt.Errorf("stream %s: %w", streams.Ingest, err)
	}
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		if !strings.HasPrefix(ci.Name, ConsumerPrefix) {
			continue
		}
		ack := uint64(max(ci.NumAckPending, 0))
		l.pending += ci.NumPending
		l.ackPending += ack
		if n := ci.NumPending + ack; n > 0 {
			l.tenants = append(l.tenants, tenantLag{tenant: ci.Config.Metadata[MetaTenant], n: n})
		}
	}
	if err := lister.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return lag{}, fmt.Errorf("consumers of %s: %w", streams.Ingest, err)
	}
	return l, nil
}
