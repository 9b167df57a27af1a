package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/surge-events/surge/pkg/problems"
)

const problemsUsage = `Usage: surge problems [flags]

  The problems of tenants' events that were accepted and then dead-lettered,
  conflicted with their typed column or stayed unpromoted, as each tenant
  sees them with GET /v1/problems: per tenant and reason, the count, the
  fields, the last time and a few samples. Every tenant unless --tenant,
  including _unknown (requests with an unknown key) and _overflow (problems
  past what a service holds per second), which no tenant sees.

Flags:
`

// problemsCmd is `surge problems`.
func problemsCmd(args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return runProblems(ctx, args, os.Stdout)
}

func runProblems(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("problems", flag.ContinueOnError)
	fs.SetOutput(out)
	conn := addNATSFlags(fs)
	tenant := fs.String("tenant", "", "only this `tenant`'s problems")
	sinceFlag := fs.String("since", "24h", "from this RFC 3339 `time`, or this long ago (1h, 30m)")
	limit := fs.Int("limit", problems.DefaultReadLimit, "read at most this many aggregates")
	samples := fs.Int("samples", 3, "samples shown per tenant and reason")
	fs.Usage = func() {
		fmt.Fprint(out, problemsUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	until := time.Now().UTC()
	since, err := parseSinceFlag(*sinceFlag, until)
	if err != nil {
		return err
	}
	nc, js, err := conn.connect("surge-problems")
	if err != nil {
		return err
	}
	defer nc.Close()
	aggs, truncated, err := problems.Read(ctx, js, problems.Query{Tenant: *tenant, Since: since, Until: until, Limit: *limit})
	if err != nil {
		return err
	}
	printProblems(out, aggs, *samples)
	if truncated {
		fmt.Fprintf(out, "truncated: read the first %d aggregates since %s; use a later --since or a higher --limit\n", *limit, since.Format(time.RFC3339))
	}
	return nil
}

// printProblems prints one line per tenant and reason, tenants in order.
func printProblems(out io.Writer, aggs []problems.Aggregate, samples int) {
	if len(aggs) == 0 {
		fmt.Fprintln(out, "no problems")
		return
	}
	byTenant := make(map[string][]problems.Aggregate)
	for _, a := range aggs {
		byTenant[a.Tenant] = append(byTenant[a.Tenant], a)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tREASON\tCOUNT\tFIELDS\tLAST\tSAMPLES")
	tenants := make([]string, 0, len(byTenant))
	for t := range byTenant {
		tenants = append(tenants, t)
	}
	slices.Sort(tenants)
	for _, t := range tenants {
		for _, s := range problems.Fold(byTenant[t], samples) {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", t, s.Reason, s.Count, fieldList(s.Fields), s.Last.UTC().Format(time.RFC3339), sampleList(s.Samples))
		}
	}
	_ = tw.Flush()
}

// fieldList is the first three fields with their counts.
func fieldList(fields []problems.FieldCount) string {
	var parts []string
	for i, f := range fields {
		if i == 3 {
			parts = append(parts, fmt.Sprintf("+%d more", len(fields)-3))
			break
		}
		name := f.Field
		if name == "" {
			name = "-"
		}
		parts = append(parts, fmt.Sprintf("%s (%d)", name, f.Count))
	}
	return strings.Join(parts, ", ")
}

// sampleList names each sample by its id, else its detail.
func sampleList(samples []problems.Sample) string {
	var parts []string
	for _, s := range samples {
		switch {
		case s.ID != "" && s.Detail != "":
			parts = append(parts, s.ID+": "+s.Detail)
		case s.ID != "":
			parts = append(parts, s.ID)
		default:
			parts = append(parts, s.Detail)
		}
	}
	return strings.Join(parts, "; ")
}

// parseSinceFlag reads --since: an RFC 3339 time or a positive duration.
func parseSinceFlag(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, errors.New("--since must be an RFC 3339 time or a positive duration such as 1h")
}
