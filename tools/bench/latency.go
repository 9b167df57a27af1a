package bench

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/retry"
)

type latencyResult struct {
	p50, p99, max time.Duration
	n             int
	probes        []probe // every probe that became queryable
}

// probe is one probe event: when it was sent, and how long after it
// answered a query.
type probe struct {
	sent    time.Time
	latency time.Duration
}

// latency drives a steady rate and, every 100 ms, a probe event with a
// known id; it polls ClickHouse (through the Distributed table) for the
// probes and records when each becomes queryable. The phase lasts d; the
// probes still on their way then get up to 10 s more to land, unless ctx
// ends first.
func latency(ctx context.Context, db string, ch driver.Conn, gen *generator, send func([]byte) bool, rate int, d time.Duration, perRequest int) (latencyResult, error) {
	phase, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) * float64(perRequest) / float64(rate))
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		sem := make(chan struct{}, 32) // bounded concurrent requests
		for {
			select {
			case <-phase.Done():
				return
			case <-tick.C:
				select {
				case sem <- struct{}{}:
					wg.Go(func() {
						defer func() { <-sem }()
						if send(gen.body()) {
							gen.accepted.Add(int64(perRequest))
						}
					})
				default: // the stack is behind: skip rather than queue
				}
			}
		}
	})

	var mu sync.Mutex
	sentAt := map[string]time.Time{}
	var lats []time.Duration
	var probes []probe
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-phase.Done():
				return
			case <-tick.C:
				id := fmt.Sprintf("probe-%s-%d", run, n)
				body := fmt.Sprintf(`[{"event_id":%q,"user_id":"probe-%d","type":"bench_probe"}]`, id, n)
				mu.Lock()
				sentAt[id] = time.Now()
				mu.Unlock()
				if !send([]byte(body)) {
					mu.Lock()
					delete(sentAt, id)
					mu.Unlock()
				} else {
					gen.accepted.Add(1)
				}
			}
		}
	})

	seen := map[string]bool{}
	poll := func() error {
		rows, err := ch.Query(ctx, fmt.Sprintf("SELECT event_id FROM %s.events WHERE type = 'bench_probe' AND event_id LIKE 'probe-%s-%%'", db, run))
		if err != nil {
			return err
		}
		defer rows.Close()
		now := time.Now()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			if seen[id] {
				continue
			}
			seen[id] = true
			mu.Lock()
			if t, ok := sentAt[id]; ok {
				lats = append(lats, now.Sub(t))
				probes = append(probes, probe{sent: t, latency: now.Sub(t)})
			}
			mu.Unlock()
		}
		return rows.Err()
	}
	for phase.Err() == nil {
		if err := poll(); err != nil {
			cancel()
			wg.Wait()
			return latencyResult{}, fmt.Errorf("poll probes: %w", err)
		}
		retry.Sleep(phase, 25*time.Millisecond)
	}
	wg.Wait()
	// Let the last probes land.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		pending := len(sentAt) - len(seen)
		mu.Unlock()
		if pending <= 0 || time.Now().After(deadline) {
			break
		}
		if err := poll(); err != nil {
			return latencyResult{}, err
		}
		if !retry.Sleep(ctx, 25*time.Millisecond) {
			return latencyResult{}, ctx.Err()
		}
	}
	if len(lats) == 0 {
		return latencyResult{}, errors.New("no probe became queryable")
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	q := func(p float64) time.Duration { return lats[int(p*float64(len(lats)-1))].Round(time.Millisecond) }
	return latencyResult{p50: q(0.5), p99: q(0.99), max: lats[len(lats)-1].Round(time.Millisecond), n: len(lats), probes: probes}, nil
}
