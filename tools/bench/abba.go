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
