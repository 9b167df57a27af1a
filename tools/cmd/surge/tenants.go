package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/surge-events/surge/pkg/tenants"
)

const tenantsUsage = `Usage: surge tenants [flags] <list | set TENANT|--default [limits] | unset TENANT|--default>

Per-tenant quotas, applied by every ingest instance within moments, without
a restart. A tenant without limits of its own has the default's; a zero
rate is no limit. A quota is global: the instances share it.

  surge tenants list
  surge tenants set acme --events-per-second 2000 --burst 4000 --bytes-per-second 10000000
  surge tenants set --default --events-per-second 500
  surge tenants unset acme

Flags:
`

// tenantsCmd is `surge tenants`.
func tenantsCmd(args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return runTenants(ctx, args, os.Stdout)
}

func runTenants(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("tenants", flag.ContinueOnError)
	fs.SetOutput(out)
	conn := addNATSFlags(fs)
	replicas := fs.Int("replicas", 1, "replicas of the bucket when it is created (the streams' count)")
	def := fs.Bool("default", false, "set or unset the default limits instead of a tenant's")
	var l tenants.Limits
	fs.Float64Var(&l.EventsPerSecond, "events-per-second", 0, "sustained events per second (0: no limit)")
	fs.Float64Var(&l.Burst, "burst", 0, "events accepted at once above the rate (0: one second's worth)")
	fs.Float64Var(&l.BytesPerSecond, "bytes-per-second", 0, "sustained request bytes per second, after decompression (0: no limit)")
	fs.Float64Var(&l.BytesBurst, "bytes-burst", 0, "bytes accepted at once above the rate (0: one second's worth)")
	fs.Usage = func() {
		fmt.Fprint(out, tenantsUsage)
		fs.PrintDefaults()
	}
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("give a command: list, set or unset")
	}
	tenant := ""
	if rest[0] != "list" {
		switch {
		case *def && len(rest) == 1:
		case !*def && len(rest) == 2:
			tenant = rest[1]
		default:
			return fmt.Errorf("usage: surge tenants %s TENANT | %s --default", rest[0], rest[0])
		}
	}

	nc, js, err := conn.connect("surge-tenants")
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := tenants.Open(ctx, js, *replicas)
	if err != nil {
		return err
	}
	switch rest[0] {
	case "list":
		entries, err := st.List(ctx)
		if err != nil {
			return err
		}
		printTenants(out, entries)
		return nil
	case "set":
		if err := st.Set(ctx, tenant, l); err != nil {
			return err
		}
		printTenants(out, []tenants.Entry{{Tenant: tenant, Limits: l}})
		return nil
	case "unset":
		return st.Unset(ctx, tenant)
	}
	return fmt.Errorf("unknown command %q: list, set or unset", rest[0])
}

func printTenants(out io.Writer, entries []tenants.Entry) {
	if len(entries) == 0 {
		fmt.Fprintln(out, "no limits set: every tenant has the configured default (ingest.quota)")
		return
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TENANT\tEVENTS/S\tBURST\tBYTES/S\tBYTES BURST")
	for _, e := range entries {
		name := e.Tenant
		if name == "" {
			name = "(default)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", name, limit(e.Limits.EventsPerSecond), limit(e.Limits.Burst),
			limit(e.Limits.BytesPerSecond), limit(e.Limits.BytesBurst))
	}
	_ = w.Flush()
}

func limit(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}
