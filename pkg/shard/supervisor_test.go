package shard

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/surge-events/surge/pkg/liveness"
)

func TestStaticRunsEveryShardUntilOneFails(t *testing.T) {
	var mu sync.Mutex
	var ran []int
	boom := errors.New("consumer config refused")
	err := Static{2, 5, 7}.Run(t.Context(), func(ctx context.Context, k int) error {
		mu.Lock()
		ran = append(ran, k)
		mu.Unlock()
		if k == 5 {
			return boom
		}
		<-ctx.Done() // the others run until the failure ends the run
		return nil
	})
	require.ErrorIs(t, err, boom)
	require.EqualError(t, err, "shard 5: consumer config refused")
	require.ElementsMatch(t, []int{2, 5, 7}, ran)
	require.True(t, Static{1}.Holds(3))
}

// fakeLoop is a shard loop that runs until its context ends.
type fakeLoop struct {
	k       int
	w       *liveness.Watchdog
	started chan int
	stopped chan int
}

func (l *fakeLoop) Backlog(context.Context) (uint64, error) { return 0, nil }
func (l *fakeLoop) Watchdog() *liveness.Watchdog            { return l.w }
func (l *fakeLoop) Repair(context.Context, string) error    { return nil }
func (l *fakeLoop) Run(ctx context.Context)                 { l.started <- l.k; <-ctx.Done() }
func (l *fakeLoop) Stopped()                                { l.stopped <- l.k }

type readiness struct{}

func (readiness) Ready(string)            {}
func (readiness) NotReady(string, string) {}

func TestSupervisorRunsALoopPerShardAndCleansUp(t *testing.T) {
	ws := liveness.NewWatchdogs("sink", time.Hour, readiness{}, zaptest.NewLogger(t), nil)
	started, stopped := make(chan int, 3), make(chan int, 3)
	sup := &Supervisor{
		Owner: Static{0, 1, 2},
		Start: func(_ context.Context, k int, _ func() bool) (Loop, error) {
			return &fakeLoop{k: k, w: ws.For("x"), started: started, stopped: stopped}, nil
		},
		Poller: liveness.Poller{Every: time.Millisecond, Timeout: time.Second, Log: zaptest.NewLogger(t)},
		Log:    zaptest.NewLogger(t),
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	var got []int
	for range 3 {
		got = append(got, <-started)
	}
	require.ElementsMatch(t, []int{0, 1, 2}, got)
	cancel()
	require.NoError(t, <-done)
	close(stopped)
	got = nil
	for k := range stopped {
		got = append(got, k)
	}
	require.ElementsMatch(t, []int{0, 1, 2}, got, "every loop cleaned up after it returned")
}

func TestSupervisorStaticStartFailureEndsTheRun(t *testing.T) {
	boom := errors.New("no such stream")
	sup := &Supervisor{
		Owner:  Static{0},
		Start:  func(context.Context, int, func() bool) (Loop, error) { return nil, boom },
		Poller: liveness.Poller{Every: time.Millisecond, Timeout: time.Second, Log: zaptest.NewLogger(t)},
		Log:    zaptest.NewLogger(t),
	}
	err := sup.Run(t.Context())
	require.ErrorIs(t, err, boom)
	require.EqualError(t, err, "shard 0: start shard 0: no such stream")
}
