package erasure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeStore keeps requests as JSON, like the bucket, so a runner after a
// "crash" reads only what was saved.
type fakeStore struct {
	saved map[string][]byte
	order []string
	// failSave fails the nth Save from now (1 is the next), once.
	failSave int
}

func newFakeStore(reqs ...*Request) *fakeStore {
	s := &fakeStore{saved: map[string][]byte{}}
	for _, r := range reqs {
		b, _ := json.Marshal(r)
		s.saved[r.ID] = b
		s.order = append(s.order, r.ID)
	}
	return s
}

func (s *fakeStore) Pending(context.Context) ([]*Request, error) {
	var out []*Request
	for _, id := range s.order {
		var r Request
		if err := json.Unmarshal(s.saved[id], &r); err != nil {
			return nil, err
		}
		if !r.Done() {
			out = append(out, &r)
		}
	}
	return out, nil
}

var errCrash = errors.New("crash")

func (s *fakeStore) Save(_ context.Context, r *Request) error {
	if s.failSave > 0 {
		s.failSave--
		if s.failSave == 0 {
			return errCrash
		}
	}
	b, err := json.Marshal(r)
	s.saved[r.ID] = b
	return err
}

func (s *fakeStore) get(t *testing.T, id string) *Request {
	t.Helper()
	var r Request
	require.NoError(t, json.Unmarshal(s.saved[id], &r))
	return &r
}

// fakeActions records what the runner did to the world.
type fakeActions struct {
	landed     bool
	suppressed map[string]int
	// mutations counts the mutations per batch id; an idempotent Delete
	// runs a batch's mutation once however often it is called.
	mutations map[string]int
	// members are the requests of each batch at its first Delete; a
	// later Delete of the batch must name the same.
	members map[string]string
	deletes int
	rows    map[string]uint64 // request id -> rows in ClickHouse
	// fail names an action that fails (once) with errCrash.
	fail string
}

func newFakeActions() *fakeActions {
	return &fakeActions{suppressed: map[string]int{}, mutations: map[string]int{}, members: map[string]string{}, rows: map[string]uint64{}}
}

func (a *fakeActions) crash(name string) error {
	if a.fail == name {
		a.fail = ""
		return errCrash
	}
	return nil
}

func (a *fakeActions) Suppress(_ context.Context, r *Request) error {
	if err := a.crash("suppress"); err != nil {
		return err
	}
	a.suppressed[r.ID]++
	return nil
}

func (a *fakeActions) Mark(context.Context) (map[int]Mark, error) {
	return map[int]Mark{0: {Events: 10, Batches: 2}, 1: {Events: 11}}, a.crash("mark")
}

func (a *fakeActions) Landed(context.Context, map[int]Mark) (bool, error) {
	return a.landed, a.crash("landed")
}

func (a *fakeActions) Count(_ context.Context, reqs []*Request) (map[string]map[string]uint64, error) {
	if err := a.crash("count"); err != nil {
		return nil, err
	}
	out := map[string]map[string]uint64{}
	for _, r := range reqs {
		out[r.ID] = map[string]uint64{"0": a.rows[r.ID]}
	}
	return out, nil
}

func (a *fakeActions) Delete(_ context.Context, batch string, reqs []*Request) error {
	a.deletes++
	var ids []string
	for _, r := range reqs {
		ids = append(ids, r.ID)
	}
	if m, ok := a.members[batch]; ok && m != fmt.Sprint(ids) {
		return fmt.Errorf("batch %s was %s, now %v", batch, m, ids)
	}
	a.members[batch] = fmt.Sprint(ids)
	if a.mutations[batch] == 0 {
		a.mutations[batch] = 1
		for _, r := range reqs {
			a.rows[r.ID] = 0
		}
	}
	return a.crash("delete")
}

func (a *fakeActions) DeleteDeadLetters(_ context.Context, reqs []*Request) (map[string]int, error) {
	out := map[string]int{}
	for _, r := range reqs {
		out[r.ID] = 1
	}
	return out, a.crash("deadletters")
}

func (a *fakeActions) Verify(_ context.Context, reqs []*Request) error {
	for _, r := range reqs {
		if a.rows[r.ID] != 0 {
			return fmt.Errorf("%w: of %s", ErrRowsLeft, r.ID)
		}
	}
	return a.crash("verify")
}

func request(id string) *Request {
	return &Request{ID: id, Tenant: "t", Users: []string{"u-" + id}, UserHashes: []string{UserHash("t", "u-"+id)},
		UserCount: 1, RequestedAt: time.Unix(1, 0).UTC(), State: Requested}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// batches numbers the deletion batches across runners, like ULIDs would.
var batches int

func newRunner(s *fakeStore, a *fakeActions, c *clock) *Runner {
	n := &batches
	return &Runner{Store: s, Actions: a, Settle: 5 * time.Second, Now: c.now,
		NewBatch: func() string { *n++; return fmt.Sprintf("b%d", *n) }}
}

func TestRunnerStates(t *testing.T) {
	batches = 0
	s := newFakeStore(request("a"), request("b"))
	a := newFakeActions()
	a.rows["a"], a.rows["b"] = 7, 3
	c := &clock{t: time.Unix(100, 0)}
	r := newRunner(s, a, c)
	ctx := t.Context()

	pending, err := r.Step(ctx)
	require.NoError(t, err)
	require.True(t, pending)
	require.Equal(t, Suppressed, s.get(t, "a").State)
	require.Nil(t, s.get(t, "a").Marks, "no marks before the settle delay")

	c.t = c.t.Add(5 * time.Second)
	_, err = r.Step(ctx)
	require.NoError(t, err)
	require.Equal(t, Suppressed, s.get(t, "a").State, "not landed yet")
	require.Equal(t, Mark{Events: 10, Batches: 2}, s.get(t, "a").Marks[0])

	a.landed = true
	pending, err = r.Step(ctx)
	require.NoError(t, err)
	require.False(t, pending)
	for id, rows := range map[string]uint64{"a": 7, "b": 3} {
		q := s.get(t, id)
		require.Equal(t, Verified, q.State)
		require.Empty(t, q.Users, "raw ids dropped once verified")
		require.Len(t, q.UserHashes, 1)
		require.Equal(t, map[string]uint64{"0": rows}, q.RowsDeleted)
		require.Equal(t, "b1", q.Batch, "both requests in one deletion batch")
		require.Equal(t, 1, q.DeadLetters)
		require.False(t, q.VerifiedAt.IsZero())
	}
	require.Equal(t, map[string]int{"b1": 1}, a.mutations)
}

// TestRunnerResumes crashes the runner at every action and every save in
// turn; a new runner on the same store always finishes, with one mutation
// per deletion batch and the row counts from before the mutation.
func TestRunnerResumes(t *testing.T) {
	actions := []string{"suppress", "mark", "landed", "count", "delete", "deadletters", "verify"}
	type tc struct {
		name     string
		action   string
		failSave int
	}
	var cases []tc
	for _, n := range actions {
		cases = append(cases, tc{name: "action " + n, action: n})
	}
	for i := 1; i <= 14; i++ {
		cases = append(cases, tc{name: fmt.Sprintf("save %d", i), failSave: i})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newFakeStore(request("a"), request("b"))
			a := newFakeActions()
			a.rows["a"], a.rows["b"] = 7, 3
			a.landed = true
			a.fail, s.failSave = c.action, c.failSave
			clk := &clock{t: time.Unix(100, 0)}
			crashed := false
			for range 20 {
				clk.t = clk.t.Add(5 * time.Second)
				// A new runner each time: it knows only the store.
				pending, err := newRunner(s, a, clk).Step(t.Context())
				if err != nil {
					require.ErrorIs(t, err, errCrash)
					crashed = true
					continue
				}
				if !pending {
					break
				}
			}
			require.True(t, crashed || c.failSave > 0, "the crash happened")
			for id, rows := range map[string]uint64{"a": 7, "b": 3} {
				q := s.get(t, id)
				require.Equal(t, Verified, q.State, id)
				require.Equal(t, map[string]uint64{"0": rows}, q.RowsDeleted, id)
			}
			// A crash between naming the batch on the two requests may
			// split them over two batches; a batch never changes its
			// requests, so its mutation (keyed by the batch) runs once.
			require.LessOrEqual(t, len(a.mutations), 2, "batches: %v", a.members)
		})
	}
}

func TestRunnerLateRequestGetsNextBatch(t *testing.T) {
	batches = 0
	s := newFakeStore(request("a"))
	a := newFakeActions()
	a.landed = true
	clk := &clock{t: time.Unix(100, 0)}
	r := newRunner(s, a, clk)
	for range 3 {
		clk.t = clk.t.Add(5 * time.Second)
		_, err := r.Step(t.Context())
		require.NoError(t, err)
	}
	require.Equal(t, Verified, s.get(t, "a").State)
	late := request("b")
	late.RequestedAt = time.Unix(2, 0)
	b, _ := json.Marshal(late)
	s.saved["b"], s.order = b, append(s.order, "b")
	for range 3 {
		clk.t = clk.t.Add(5 * time.Second)
		_, err := r.Step(t.Context())
		require.NoError(t, err)
	}
	require.Equal(t, Verified, s.get(t, "b").State)
	require.Equal(t, "b2", s.get(t, "b").Batch)
}

func TestSuppressionCovers(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		s    Suppression
		ts   time.Time
		want bool
	}{
		{"whole user", Suppression{}, at, true},
		{"before the cut", Suppression{Before: at}, at.Add(-time.Second), true},
		{"at the cut", Suppression{Before: at}, at, false},
		{"after the cut", Suppression{Before: at}, at.Add(time.Hour), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { require.Equal(t, c.want, c.s.Covers(c.ts)) })
	}
	require.True(t, Suppression{}.wider(Suppression{Before: at}))
	require.False(t, Suppression{Before: at}.wider(Suppression{}))
	require.True(t, Suppression{Before: at.Add(time.Hour)}.wider(Suppression{Before: at}))
}

// TestRunnerDeletesAgainWhenRowsAreLeft: a row that lands after the
// mutation (a late batch) sends the request round again in a new batch,
// and its rows add up.
func TestRunnerDeletesAgainWhenRowsAreLeft(t *testing.T) {
	batches = 0
	s := newFakeStore(request("a"))
	a := newFakeActions()
	a.landed = true
	a.rows["a"] = 5
	late := &lateRows{fakeActions: a, after: "b1", rows: 2}
	clk := &clock{t: time.Unix(100, 0)}
	r := newRunner(s, a, clk)
	r.Actions = late
	for range 6 {
		clk.t = clk.t.Add(5 * time.Second)
		_, _ = r.Step(t.Context())
	}
	q := s.get(t, "a")
	require.Equal(t, Verified, q.State)
	require.Equal(t, "b2", q.Batch)
	require.Equal(t, 1, q.Rounds)
	require.Equal(t, map[string]uint64{"0": 7}, q.RowsDeleted)
}

// lateRows lands rows once, after the mutation of batch after.
type lateRows struct {
	*fakeActions
	after string
	rows  uint64
}

func (l *lateRows) Delete(ctx context.Context, batch string, reqs []*Request) error {
	err := l.fakeActions.Delete(ctx, batch, reqs)
	if batch == l.after && l.rows > 0 {
		for _, r := range reqs {
			l.fakeActions.rows[r.ID] = l.rows
		}
		l.rows = 0
	}
	return err
}
