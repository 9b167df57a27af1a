package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/services/sink"
	"github.com/surge-events/surge/tools/schemaview"
)

const schemaUsage = `Usage: surge schema <ls | conflicts | unpromoted> [flags]

What became of event properties: the typed columns the batchers agreed
on (the SURGE_SCHEMA bucket, key table.<--table>) beside the columns each
ClickHouse server's events_local holds.

  ls          one line per column: name, JSON pointer, logical type, its
              ClickHouse type (each server's when they disagree, MISSING
              where a server lacks it, DIFFERS where it holds another kind),
              origin, tenant, when it was agreed and its fill rate, the rows
              holding a value (--tenant: of that tenant's rows); then the
              columns ClickHouse holds that the registry does not know
  conflicts   the property paths whose values did not fit their column,
              with their count and up to 3 values, from a sample of the
              _conflicts of the rows received in the last --since
  unpromoted  the property paths left out of the typed columns in the rows
              received in the last --since, with their count

Settings come from the flags, else the environment variables the services
read (SURGE_NATS_URL, SURGE_NATS_USER, SURGE_NATS_PASSWORD,
SURGE_CLICKHOUSE_ADDRS, SURGE_CLICKHOUSE_USERNAME, SURGE_CLICKHOUSE_PASSWORD,
SURGE_CLICKHOUSE_DATABASE, SURGE_SCHEMA_TABLE), else the local stack's
stack.json in --dir. The command only reads: it never creates the bucket.

Flags:
`

// schemaCmd is `surge schema`.
func schemaCmd(args []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runSchema(ctx, args, os.Stdout, os.Stderr)
}

func runSchema(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, schemaUsage)
		if len(args) == 0 {
			return errors.New("give a command: ls, conflicts or unpromoted")
		}
		return nil
	}
	sub := args[0]
	switch sub {
	case "ls", "conflicts", "unpromoted":
	default:
		return fmt.Errorf("unknown schema command %q (ls, conflicts, unpromoted)", sub)
	}
	flags := flag.NewFlagSet("schema "+sub, flag.ContinueOnError)
	flags.SetOutput(stderr)
	where := addStackFlags(flags, "the schema's `name` in the registry (env SURGE_SCHEMA_TABLE; default "+schema.DefaultConfig().Table+")")
	tenant := flags.String("tenant", "", "count this tenant's rows only")
	asJSON := flags.Bool("json", false, "print the result as JSON")
	timeout := flags.Duration("timeout", 30*time.Second, "bound on each request")
	var since *time.Duration
	var limit, sample *int
	if sub != "ls" {
		since = flags.Duration("since", time.Hour, "count the rows received this `long` ago or later")
		limit = flags.Int("limit", 20, "list at most this many paths (0: all)")
	}
	if sub == "conflicts" {
		sample = flags.Int("sample", schemaview.DefaultSample, "read the _conflicts of at most this many rows")
	}
	flags.Usage = func() {
		fmt.Fprint(stderr, schemaUsage)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flags.Args())
	}
	if since != nil && *since <= 0 {
		return errors.New("--since must be positive")
	}
	if limit != nil && *limit < 0 {
		return errors.New("--limit must not be negative")
	}
	if sample != nil && *sample <= 0 {
		return errors.New("--sample must be positive")
	}
	cfg, err := where.config(flags, nil)
	if err != nil {
		return err
	}
	if len(cfg.ClickHouse) == 0 {
		return errors.New("no ClickHouse server: give --clickhouse or SURGE_CLICKHOUSE_ADDRS")
	}
	if cfg.Database == "" {
		cfg.Database = "surge"
	}
	if cfg.SchemaTable == "" {
		cfg.SchemaTable = schema.DefaultConfig().Table
	}
	var shards [][]string
	for _, entry := range cfg.ClickHouse {
		shards = append(shards, sink.Replicas(entry))
	}
	src, err := schemaview.Open(cfg.Database, shards, clickhouse.Auth{Username: cfg.ClickHouseUser, Password: cfg.ClickHousePassword}, *timeout)
	if err != nil {
		return err
	}
	defer src.Close()

	// readSchema reads the table's schema without creating the bucket; a
	// missing bucket is an empty schema and a note.
	readSchema := func() (schema.Snapshot, string, error) {
		opts := []nats.Option{nats.Name("surge-schema"), nats.Timeout(*timeout)}
		if cfg.NATSUser != "" {
			opts = append(opts, nats.UserInfo(cfg.NATSUser, cfg.NATSPassword))
		}
		nc, err := nats.Connect(cfg.NATSURL, opts...)
		if err != nil {
			return schema.Snapshot{}, "", fmt.Errorf("connect to nats %s: %w", cfg.NATSURL, err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return schema.Snapshot{}, "", err
		}
		rctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if _, err := js.KeyValue(rctx, schema.Bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
			return schema.Snapshot{Doc: &schema.Doc{}}, fmt.Sprintf("no bucket %s: no batcher with typed columns has started", schema.Bucket), nil
		} else if err != nil {
			return schema.Snapshot{}, "", fmt.Errorf("schema bucket %s: %w", schema.Bucket, err)
		}
		reg, err := schema.OpenRegistry(rctx, js, cfg.SchemaTable, 1, *timeout)
		if err != nil {
			return schema.Snapshot{}, "", err
		}
		snap := reg.Current()
		if snap.Rev == 0 {
			return snap, fmt.Sprintf("no schema %s in %s yet", schema.Key(cfg.SchemaTable), schema.Bucket), nil
		}
		return snap, "", nil
	}

	show := func(v any, render func(io.Writer) error) error {
		if *asJSON {
			return schemaview.JSON(stdout, v)
		}
		return render(stdout)
	}
	q := schemaview.Query{Tenant: *tenant}
	if since != nil {
		q.Since, q.Limit = time.Now().Add(-*since), *limit
	}
	switch sub {
	case "ls":
		snap, note, err := readSchema()
		if err != nil {
			return err
		}
		cols, err := src.Columns(ctx, cfg.SchemaTable, snap, *tenant)
		if err != nil {
			return err
		}
		if note != "" {
			cols.Notes = append([]string{note}, cols.Notes...)
		}
		return show(cols, func(w io.Writer) error { return schemaview.RenderColumns(w, cols) })
	case "conflicts":
		q.Sample = *sample
		// The registry only names each path's column: without it the
		// conflicts are still worth printing.
		snap, note, err := readSchema()
		if err != nil {
			note = "no column names: " + err.Error()
		}
		c, err := src.Conflicts(ctx, q, snap.Doc)
		if err != nil {
			return err
		}
		if note != "" {
			c.Notes = append(c.Notes, note)
		}
		return show(c, func(w io.Writer) error { return schemaview.RenderConflicts(w, c) })
	default:
		u, err := src.Unpromoted(ctx, q)
		if err != nil {
			return err
		}
		return show(u, func(w io.Writer) error { return schemaview.RenderUnpromoted(w, u) })
	}
}
