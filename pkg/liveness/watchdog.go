// Package liveness notices work that stops moving and puts it back on its
// feet: a Keepalive keeps the JetStream messages a worker holds from being
// handed out again, a Watchdog per unit of work (a shard, the
// partitioner's input) says when a backlog makes no progress, and a
// Poller reads each unit's backlog on one rule and has a unit whose
// consumer is gone or stalled repaired. The services keep only their
// reads and fetches.
package liveness

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.uber.org/zap"
)

// Readiness is where a stall shows: the service's /readyz.
type Readiness interface {
	Ready(check string)
	NotReady(check, reason string)
}

// Watchdogs make the stall counter of a service,
// surge_<service>_stalls_total{shard}, and one Watchdog per unit of work.
type Watchdogs struct {
	service string
	timeout time.Duration
	ready   Readiness
	log     *zap.Logger
	stalls  *prometheus.CounterVec
	now     func() time.Time
}

// NewWatchdogs returns the watchdog factory of service: a unit with work
// pending and no progress for timeout is stalled, counted in reg, logged
// and shown on ready.
func NewWatchdogs(service string, timeout time.Duration, ready Readiness, log *zap.Logger, reg prometheus.Registerer) *Watchdogs {
	return newWatchdogs(service, timeout, ready, log, reg, time.Now)
}

func newWatchdogs(service string, timeout time.Duration, ready Readiness, log *zap.Logger, reg prometheus.Registerer, now func() time.Time) *Watchdogs {
	return &Watchdogs{
		service: service, timeout: timeout, ready: ready, log: log, now: now,
		stalls: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
			Name: "surge_" + service + "_stalls_total",
			Help: "Times a unit of work (a shard, or the partitioner's input) had work pending and made no progress for the stall timeout, by shard.",
		}, []string{"shard"}),
	}
}

// Timeout is the stall timeout.
func (ws *Watchdogs) Timeout() time.Duration { return ws.timeout }

// For returns the watchdog of one unit: label is the shard number, or
// "input" for the partitioner's shared consumer.
func (ws *Watchdogs) For(label string) *Watchdog {
	unit := "shard " + label
	if label == "input" {
		unit = "input"
	}
	ws.stalls.WithLabelValues(label) // shown at 0 before the first stall
	return &Watchdog{ws: ws, label: label, unit: unit, check: "stalled " + unit, last: ws.now(), waiting: "start"}
}

// Watchdog notices a unit of work that has work pending but makes no
// progress. Its owner reports progress and what it waits on; a poller
// that knows the backlog calls Check. A stall is logged once, counted,
// shown on /readyz (check "stalled <unit>", with what the unit waits on)
// until progress resumes, and handed to the owner once to repair
// (Repair). Safe for concurrent use.
type Watchdog struct {
	ws    *Watchdogs
	label string
	unit  string
	check string

	mu      sync.Mutex
	last    time.Time // the last progress, or when the unit started
	waiting string    // what the unit waits on now
	stalled bool
	repair  bool // a stall the owner has not repaired yet
}

// Progress says the unit moved (a batch landed, a message was taken):
// the stall, if any, is over.
func (w *Watchdog) Progress() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = w.ws.now()
	if w.stalled {
		w.stalled, w.repair = false, false
		w.ws.ready.Ready(w.check)
		w.ws.log.Info("progress resumed", zap.String("unit", w.unit))
	}
}

// Waiting records what the unit waits on now, for the stall report
// ("fetch from BATCHES", "insert into clickhouse 10.0.0.1:9000").
func (w *Watchdog) Waiting(what string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiting = what
}

// Idle says the unit has nothing to do: time without work is no stall.
func (w *Watchdog) Idle() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = w.ws.now()
}

// Check is called with the unit's backlog (messages waiting or unacked).
// It reports whether the unit is stalled: backlog and no progress for the
// timeout. Without a backlog the unit is idle, not stalled.
func (w *Watchdog) Check(backlog uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.ws.now()
	if backlog == 0 {
		w.last = now
		if w.stalled {
			w.stalled, w.repair = false, false
			w.ws.ready.Ready(w.check)
		}
		return false
	}
	idle := now.Sub(w.last)
	if idle < w.ws.timeout {
		return false
	}
	if !w.stalled {
		w.stalled, w.repair = true, true
		w.ws.stalls.WithLabelValues(w.label).Inc()
		w.ws.log.Error("stalled: work pending, no progress",
			zap.String("unit", w.unit), zap.Uint64("backlog", backlog),
			zap.Duration("since_progress", idle.Round(time.Second)), zap.String("waiting_on", w.waiting))
	}
	w.ws.ready.NotReady(w.check, fmt.Sprintf("%d pending, no progress for %s, waiting on %s", backlog, idle.Round(time.Second), w.waiting))
	return true
}

// Repair reports, once per stall, that the owner should recreate its
// fetch or consumer.
func (w *Watchdog) Repair() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.repair
	w.repair = false
	return r
}

// Stalled reports whether the unit is stalled now.
func (w *Watchdog) Stalled() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stalled
}
