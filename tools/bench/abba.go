package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/tools/stack"
)

// offOn is a comparison of a feature off and on, as --tenants, --dedup
// and --typed both run it: four fresh stacks in the order off, on, on,
// off. On this machine a stack runs slower after another (the first one's
// files are still being written back), which alone moved a single
// off-then-on ratio from 0.5 to 1.3; the ABBA order cancels it. Each
// mode's two runs are averaged (meanRuns).
type offOn struct {
	// name is the feature, for labels ("quotas", "dedup", "typed").
	name string
	// run is the stack of one mode, its dir and outputs left to runOffOn.
	run func(on bool) stackRun
}

// runOffOn runs the four stacks and returns each mode's runs.
func runOffOn(ctx context.Context, f benchFlags, gen *generator, c offOn) (offs, ons []benchReport, err error) {
	for i, on := range []bool{false, true, true, false} {
		label := fmt.Sprintf("%s-%s-%d", c.name, map[bool]string{false: "off", true: "on"}[on], i+1)
		run := c.run(on)
		run.dir, run.fresh = filepath.Join(f.dir, label), true
		run.report, run.cpuProfile, run.memProfile = modeDir(f.report, schema.Mode(label)), modeFile(f.cpuProfile, schema.Mode(label)), modeFile(f.memProfile, schema.Mode(label))
		r, err := benchStack(ctx, f, gen, run)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", label, err)
		}
		if on {
			ons = append(ons, r)
		} else {
			offs = append(offs, r)
		}
	}
	return offs, ons, nil
}

// offOnReport prints the four runs, then each mode averaged and the ratio,
// under title.
func offOnReport(title, name string, offs, ons []benchReport) string {
	off, on := meanRuns(offs), meanRuns(ons)
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s; stacks run off, on, on, off, each mode's two averaged)\n", title)
	for i, r := range []benchReport{offs[0], ons[0], ons[1], offs[1]} {
		mode := name + map[bool]string{false: " off", true: " on"}[i == 1 || i == 2]
		fmt.Fprintf(&b, "  run %d %-10s inserted %.0f events/s, accepted %.0f events/s\n", i+1, mode, r.tp.inserted, r.tp.accepted)
	}
	for _, l := range spreadLines(offs, ons, "off", "on") {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	row := func(label, a, c, ratio string) { fmt.Fprintf(&b, "  %-26s %20s %20s %10s\n", label, a, c, ratio) }
	ratio := func(a, c float64) string {
		if a == 0 {
			return "-"
		}
		return fmt.Sprintf("%.3f", c/a)
	}
	row("", name+" off", name+" on", "on/off")
	row("accepted (HTTP 202)", fmt.Sprintf("%.0f events/s", off.tp.accepted), fmt.Sprintf("%.0f events/s", on.tp.accepted), ratio(off.tp.accepted, on.tp.accepted))
	row("inserted (queryable)", fmt.Sprintf("%.0f events/s", off.tp.inserted), fmt.Sprintf("%.0f events/s", on.tp.inserted), ratio(off.tp.inserted, on.tp.inserted))
	row("p99 ingest-to-queryable", off.lat.p99.String(), on.lat.p99.String(), ratio(off.lat.p99.Seconds(), on.lat.p99.Seconds()))
	return b.String()
}

// runSpread is how far apart a mode's two runs may insert before the
// report calls its ratio rough: the runs of a quiet sitting here stay
// within about 20% of each other, and one run disturbed by other work on
// the machine (once 43,500 events/s against 110,000) moves the average
// more than the feature does.
const runSpread = 1.25

// spreadLines are the ratio of each pair there and back (run 2 over run
// 1, run 3 over run 4, by rate inserted), and a note for each mode whose
// two runs are further apart than runSpread.
func spreadLines(offs, ons []benchReport, offName, onName string) []string {
	pair := func(off, on benchReport) string {
		if off.tp.inserted == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", on.tp.inserted/off.tp.inserted)
	}
	lines := []string{fmt.Sprintf("each pair there and back, inserted %s/%s: runs 2/1 %s, runs 3/4 %s",
		onName, offName, pair(offs[0], ons[0]), pair(offs[1], ons[1]))}
	for _, m := range []struct {
		name string
		runs []benchReport
	}{{offName, offs}, {onName, ons}} {
		lo := min(m.runs[0].tp.inserted, m.runs[1].tp.inserted)
		hi := max(m.runs[0].tp.inserted, m.runs[1].tp.inserted)
		const rough = "the machine's pace moved, so the ratio is rough; run again"
		switch {
		case hi > 0 && lo == 0:
			lines = append(lines, fmt.Sprintf("note: one of the two %s runs inserted nothing, so the ratio means nothing; run again", m.name))
		case hi > lo*runSpread:
			lines = append(lines, fmt.Sprintf("note: the two %s runs inserted %.2fx apart, more than %.2fx: %s", m.name, hi/lo, runSpread, rough))
		}
	}
	return lines
}

// stackJetStream connects to the stack's NATS as its services do.
func stackJetStream(st *stack.Stack) (jetstream.JetStream, func(), error) {
	nc, err := nats.Connect(st.NATS.ClientURL(), nats.UserInfo(st.NATSAuth.User, st.NATSAuth.Password))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return js, nc.Close, nil
}
