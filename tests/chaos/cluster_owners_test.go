package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/tools/stack"
)

// The log lines the ownership check reads: a shard's work starts and
// stops (batcher and sink, lease mode), and its outputs (debug level).
const (
	msgShardStarted   = "shard started"
	msgShardStopped   = "shard stopped"
	msgBatchPublished = "batch published"
	msgBatchInserted  = "batch inserted"
	msgSharing        = "sharing shards by leases"
	msgRanOut         = "lease ran out without renewal; shard stopped"
	msgLeaseLost      = "lease lost; shard stopped"
)

// workSpan is one run of one shard's work in one process: from its
// "shard started" to its "shard stopped", or to the process's end.
type workSpan struct {
	service, proc string // proc: "<instance name>#<run>"
	shard         int
	start, end    float64 // Unix seconds; end is +Inf while it runs
	// fenced is when the lease code took the shard from this run (its
	// lease ran out or was lost: Holds turned false, the run's context
	// was cancelled), +Inf if it never did. The run may drain after it,
	// until end, but owns the shard only until then: an output of its
	// drain is checked against the shard's next owner like any other.
	fenced float64
	// outputs are the times of the batches it published or inserted.
	outputs []float64
	// late are the outputs logged after a pause during which the shard
	// went to another process (the span's end is then the pause's start).
	late []float64
}

// pause is one SIGSTOP..SIGCONT of a run of an instance (Unix seconds).
type pause struct {
	run      int
	from, to float64
}

// runEnd is how one run of an instance ended: at (Unix seconds) by a
// SIGKILL or a SIGTERM; a run missing from the list still runs.
type runEnd struct {
	at     float64
	killed bool
}

// logLine is the part of a service's JSON log line the check reads.
type logLine struct {
	TS       float64 `json:"ts"`
	Msg      string  `json:"msg"`
	Shard    *int    `json:"shard"`
	Instance string  `json:"instance"`
}

// readSpans reads the work spans of every shard from the log of one
// instance (every run of it, each opened by stack.InstanceStartMarker).
// ends lists how its runs ended, in order: a span still open when its run
// ended closes then. A span that ran across one of pauses and past it
// ends at the pause's start (the pause outlasted its lease: the test
// waited for every shard to move), and its outputs after the pause are
// late.
func readSpans(service, name, path string, ends []runEnd, pauses []pause) ([]workSpan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []workSpan
	run := -1
	open := map[int]int{} // shard -> index in out of its open span
	closeRun := func() {
		end := math.Inf(1)
		if run >= 0 && run < len(ends) {
			end = ends[run].at
		}
		for _, i := range open {
			out[i].end = end
		}
		clear(open)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if strings.HasPrefix(string(line), stack.InstanceStartMarker) {
			closeRun()
			run++
			continue
		}
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var l logLine
		if err := json.Unmarshal(line, &l); err != nil || l.Shard == nil {
			continue
		}
		k := *l.Shard
		switch l.Msg {
		case msgShardStarted:
			if i, ok := open[k]; ok {
				return nil, fmt.Errorf("%s run %d: shard %d started at %.3f while its run since %.3f had not stopped", name, run, k, l.TS, out[i].start)
			}
			open[k] = len(out)
			out = append(out, workSpan{service: service, proc: fmt.Sprintf("%s#%d", name, run), shard: k, start: l.TS, end: math.Inf(1), fenced: math.Inf(1)})
		case msgRanOut, msgLeaseLost:
			if i, ok := open[k]; ok {
				out[i].fenced = min(out[i].fenced, l.TS)
			}
		case msgShardStopped:
			i, ok := open[k]
			if !ok {
				return nil, fmt.Errorf("%s run %d: shard %d stopped at %.3f without a start", name, run, k, l.TS)
			}
			out[i].end = l.TS
			delete(open, k)
		case msgBatchPublished, msgBatchInserted:
			i, ok := open[k]
			if !ok {
				return nil, fmt.Errorf("%s run %d: %q of shard %d at %.3f outside its work", name, run, l.Msg, k, l.TS)
			}
			out[i].outputs = append(out[i].outputs, l.TS)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	closeRun()
	for _, p := range pauses {
		for i := range out {
			s := &out[i]
			if s.proc != fmt.Sprintf("%s#%d", name, p.run) || s.start >= p.from || s.end <= p.to {
				continue
			}
			s.end = p.from
			kept := s.outputs[:0]
			for _, at := range s.outputs {
				if at > p.to {
					s.late = append(s.late, at)
				} else {
					kept = append(kept, at)
				}
			}
			s.outputs = kept
		}
	}
	return out, nil
}

// leaseInstance is the lease instance id of the last run in an instance's
// log, "" before it logged one.
func leaseInstance(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	id := ""
	for line := range strings.SplitSeq(string(data), "\n") {
		if strings.HasPrefix(line, stack.InstanceStartMarker) {
			id = ""
			continue
		}
		if !strings.Contains(line, msgSharing) {
			continue
		}
		var l logLine
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == msgSharing {
			id = l.Instance
		}
	}
	return id, nil
}

// countLines counts the JSON lines of the log at path whose msg is msg,
// logged after since (Unix seconds).
func countLines(path, msg string, since float64) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		var l logLine
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == msg && l.TS > since {
			n++
		}
	}
	return n, nil
}

// overlaps lists, per service and shard, every two work spans of
// different processes that ran at once, and every output of one process
// made while another process's span of the shard ran: the shard had two
// owners.
func overlaps(spans []workSpan) []string {
	type key struct {
		service string
		shard   int
	}
	by := map[key][]workSpan{}
	for _, s := range spans {
		by[key{s.service, s.shard}] = append(by[key{s.service, s.shard}], s)
	}
	var out []string
	for k, ss := range by {
		slices.SortFunc(ss, func(a, b workSpan) int { return cmpFloat(a.start, b.start) })
		for i := range ss {
			for j := i + 1; j < len(ss) && ss[j].start < ss[i].owned(); j++ {
				if ss[i].proc == ss[j].proc {
					continue
				}
				out = append(out, fmt.Sprintf("%s shard %d: %s ran %s while %s ran %s",
					k.service, k.shard, ss[i].proc, spanString(ss[i]), ss[j].proc, spanString(ss[j])))
			}
			for _, at := range ss[i].outputs {
				for _, o := range ss {
					if o.proc != ss[i].proc && o.start <= at && at < o.owned() {
						out = append(out, fmt.Sprintf("%s shard %d: %s output a batch at %.3f while %s owned it (%s)",
							k.service, k.shard, ss[i].proc, at, o.proc, spanString(o)))
					}
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// owned is when the span stopped owning its shard: its end, or the
// lease code's fence before it.
func (s workSpan) owned() float64 { return min(s.end, s.fenced) }

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func spanString(s workSpan) string {
	fence := ""
	if s.fenced < s.end {
		fence = fmt.Sprintf(", fenced at %.3f", s.fenced)
	}
	if math.IsInf(s.end, 1) {
		return fmt.Sprintf("[%.3f, running%s)", s.start, fence)
	}
	return fmt.Sprintf("[%.3f, %.3f%s]", s.start, s.end, fence)
}

// unix is t in the logs' time unit.
func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// TestOwnershipSpans checks the log reading and the overlap check on
// written logs: two runs of one instance (the first SIGKILLed with a
// shard running), another instance taking the shard, and a late output.
func TestOwnershipSpans(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, lines ...string) string {
		p := filepath.Join(dir, name+".log")
		require.NoError(t, os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644))
		return p
	}
	a := write("sink-0",
		stack.InstanceStartMarker+" sink-0 at x",
		`{"ts":10,"msg":"sharing shards by leases","instance":"h-aaaaaa"}`,
		`{"ts":11,"msg":"shard started","shard":3}`,
		`{"ts":12,"msg":"batch inserted","shard":3}`,
		`not json`,
		stack.InstanceStartMarker+" sink-0 at y",
		`{"ts":30,"msg":"sharing shards by leases","instance":"h-bbbbbb"}`,
		`{"ts":31,"msg":"shard started","shard":3}`,
	)
	b := write("sink-1",
		stack.InstanceStartMarker+" sink-1 at x",
		`{"ts":20,"msg":"shard started","shard":3}`,
		`{"ts":21,"msg":"batch inserted","shard":3}`,
		`{"ts":29,"msg":"shard stopped","shard":3}`,
	)
	id, err := leaseInstance(a)
	require.NoError(t, err)
	require.Equal(t, "h-bbbbbb", id)
	n, err := countLines(a, msgSharing, 10)
	require.NoError(t, err)
	require.Equal(t, 1, n, "lines after 10")

	sa, err := readSpans("sink", "sink-0", a, []runEnd{{at: 15, killed: true}}, nil)
	require.NoError(t, err)
	require.Equal(t, []workSpan{
		{service: "sink", proc: "sink-0#0", shard: 3, start: 11, end: 15, fenced: math.Inf(1), outputs: []float64{12}},
		{service: "sink", proc: "sink-0#1", shard: 3, start: 31, end: math.Inf(1), fenced: math.Inf(1)},
	}, sa)
	sb, err := readSpans("sink", "sink-1", b, nil, nil)
	require.NoError(t, err)
	require.Empty(t, overlaps(append(sa, sb...)))

	// The first run killed only at 25: it overlaps sink-1's span.
	late, err := readSpans("sink", "sink-0", a, []runEnd{{at: 25, killed: true}}, nil)
	require.NoError(t, err)
	require.Equal(t, []string{
		"sink shard 3: sink-0#0 ran [11.000, 25.000] while sink-1#0 ran [20.000, 29.000]",
		"sink shard 3: sink-1#0 output a batch at 21.000 while sink-0#0 owned it ([11.000, 25.000])",
	}, overlaps(append(late, sb...)))

	// An output with no span of its shard is an error of the log itself.
	c := write("batcher-0", `{"ts":5,"msg":"batch published","shard":1}`)
	_, err = readSpans("batcher", "batcher-0", c, nil, nil)
	require.ErrorContains(t, err, "outside its work")

	// Paused from 13 to 24 (sink-1 took the shard at 20), stopped at 26
	// after one late output at 24.5: the span ends at 13, the output is late.
	d := write("sink-2",
		stack.InstanceStartMarker+" sink-2 at x",
		`{"ts":11,"msg":"shard started","shard":3}`,
		`{"ts":12,"msg":"batch inserted","shard":3}`,
		`{"ts":24.5,"msg":"batch inserted","shard":3}`,
		`{"ts":26,"msg":"shard stopped","shard":3}`,
	)
	sd, err := readSpans("sink", "sink-2", d, nil, []pause{{run: 0, from: 13, to: 24}})
	require.NoError(t, err)
	require.Equal(t, []workSpan{{service: "sink", proc: "sink-2#0", shard: 3, start: 11, end: 13, fenced: math.Inf(1), outputs: []float64{12}, late: []float64{24.5}}}, sd)
	require.Empty(t, overlaps(append(sd, sb...)))

	// NATS unreachable: batcher-2's lease ran out at 20 and its run drained
	// until 30 (a fetch waited out its timeout); batcher-3 took the shard at
	// 22. The drain is not ownership; an output of it at 25 would be.
	fenced := func(lost string, drainOutput bool) []workSpan {
		lines := []string{
			stack.InstanceStartMarker + " batcher-2 at x",
			`{"ts":11,"msg":"shard started","shard":5}`,
			`{"ts":19,"msg":"batch published","shard":5}`,
			`{"ts":20,"msg":"` + lost + `","shard":5}`,
		}
		if drainOutput {
			lines = append(lines, `{"ts":25,"msg":"batch published","shard":5}`)
		}
		lines = append(lines, `{"ts":30,"msg":"shard stopped","shard":5}`)
		old, err := readSpans("batcher", "batcher-2", write("batcher-2", lines...), nil, nil)
		require.NoError(t, err)
		next, err := readSpans("batcher", "batcher-3", write("batcher-3",
			stack.InstanceStartMarker+" batcher-3 at x",
			`{"ts":22,"msg":"shard started","shard":5}`,
			`{"ts":23,"msg":"batch published","shard":5}`,
		), nil, nil)
		require.NoError(t, err)
		return append(old, next...)
	}
	for _, lost := range []string{msgRanOut, msgLeaseLost} {
		spans := fenced(lost, false)
		require.Equal(t, 20.0, spans[0].fenced, lost)
		require.Empty(t, overlaps(spans), lost)
		require.Equal(t, []string{
			"batcher shard 5: batcher-2#0 output a batch at 25.000 while batcher-3#0 owned it ([22.000, running))",
		}, overlaps(fenced(lost, true)), lost)
	}
	// Without the fence the drain overlaps, as before.
	require.Equal(t, []string{
		"batcher shard 5: batcher-2#0 ran [11.000, 30.000] while batcher-3#0 ran [22.000, running)",
		"batcher shard 5: batcher-3#0 output a batch at 23.000 while batcher-2#0 owned it ([11.000, 30.000])",
	}, overlaps(fenced("unrelated", false)))
}
