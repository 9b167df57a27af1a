package main

import (
	"context"
	"fmt"
	"time"

	"github.com/surge-events/surge/tools/stack"
)

// progressEvery is how often `surge up` looks at the pipeline.
const progressEvery = 2 * time.Second

// sample is what one look at the pipeline reads.
type sample struct {
	at time.Time
	// accepted and inserted count since this process started: events
	// ingest answered 202 for, rows the sink inserted (which, after a
	// restart, include what earlier runs left in the streams).
	accepted, inserted float64
	// backlog is the work waiting in the streams, whichever run left it.
	backlog    stack.Backlog
	backlogErr error
}

func (s sample) String() string {
	if s.backlogErr != nil {
		return fmt.Sprintf("backlog: unknown (%v)", s.backlogErr)
	}
	return s.backlog.String()
}

// progressLine is the line `surge up` prints for cur after prev; "" when
// nothing moved and nothing waits. Every figure is a count or a rate of
// one counter, never a difference of two, so none can be negative.
func progressLine(prev, cur sample) string {
	moved := cur.accepted != prev.accepted || cur.inserted != prev.inserted ||
		cur.backlog != prev.backlog || (cur.backlogErr == nil) != (prev.backlogErr == nil)
	if !moved && cur.backlogErr == nil && cur.backlog.Empty() {
		return ""
	}
	secs := cur.at.Sub(prev.at).Seconds()
	rate := func(now, before float64) float64 {
		if secs <= 0 || now < before {
			return 0
		}
		return (now - before) / secs
	}
	return fmt.Sprintf("%s  accepted %10.0f (%8.0f/s)   inserted %10.0f (%8.0f/s)   %s",
		cur.at.Format("15:04:05"), cur.accepted, rate(cur.accepted, prev.accepted),
		cur.inserted, rate(cur.inserted, prev.inserted), cur)
}

func read(st *stack.Stack, at time.Time) sample {
	s := sample{at: at, accepted: st.Accepted(), inserted: st.Inserted()}
	s.backlog, s.backlogErr = st.Backlog()
	return s
}

// progress prints a progress line every progressEvery while the counts
// move or work waits in the streams, until ctx ends.
func progress(ctx context.Context, st *stack.Stack) {
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	last := read(st, time.Now())
	if last.backlogErr != nil || !last.backlog.Empty() {
		fmt.Printf("%s  at start: %s\n", last.at.Format("15:04:05"), last)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			cur := read(st, now)
			if line := progressLine(last, cur); line != "" {
				fmt.Println(line)
			}
			last = cur
		}
	}
}
