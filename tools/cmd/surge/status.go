package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/surge-events/surge/tools/stack"
	"github.com/surge-events/surge/tools/status"
)

const statusUsage = `Usage: surge status [flags]

One screen of a running Surge: per shard its owners, what waits in EVENTS
and BATCHES and how old the oldest waiting message is, the watermark, rows
and rows/s in ClickHouse, the last insert and dead letters; per stream its
messages, bytes against its limit and replicas; per service instance
whether it is ready and why not; per table of typed columns (the
SURGE_SCHEMA bucket) its columns against their limit (the batchers'
schema.max_columns), the columns agreed and not yet on every ClickHouse
server (pending DDL; --table's only, the one landing in events_local),
the columns whose DDL failed and the conflicting values per 100 rows.

Without --nats (or SURGE_NATS_URL) it reads the local stack's stack.json in
--dir. Settings come from the flags, else the environment variables the
services read (SURGE_NATS_URL, SURGE_NATS_USER, SURGE_NATS_PASSWORD,
SURGE_CLICKHOUSE_ADDRS, SURGE_CLICKHOUSE_USERNAME, SURGE_CLICKHOUSE_PASSWORD,
SURGE_CLICKHOUSE_DATABASE, SURGE_SCHEMA_TABLE) and SURGE_STATUS_ADMIN, else
stack.json.

Exit status: 0 healthy; 1 unhealthy (a stalled, lagging, unowned or unread
shard, a stream over --stream-full of its limit or with replicas behind,
dead letters waiting, an instance not ready, a ClickHouse server not
answering), each reason named on stderr; 2 the status could not be read
(bad flags, NATS unreachable). With --watch, the last refresh's.
Warnings leave the status healthy: a column pending DDL longer than
--pending-ddl, columns whose DDL failed, a table at its column limit, a
schema bucket not answering. None loses or holds up a row (the values stay
in properties; a missing column that holds inserts up shows as the
shard's stall or lag).

Flags:
`

// statusExit are the exit statuses of `surge status`.
const (
	statusHealthy   = 0
	statusUnhealthy = 1
	statusFailed    = 2
)

// statusCmd is `surge status`; it returns the exit status.
func statusCmd(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runStatus(ctx, args, os.Stdout, os.Stderr)
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("status", flag.ContinueOnError)
	flags.SetOutput(stderr)
	where := addStackFlags(flags, "the schema `name` whose typed columns land in events_local (env SURGE_SCHEMA_TABLE; default events)")
	admin := flags.String("admin", "", "service instances' admin `addresses` as name=host:port, comma separated, the name starting with its service: sink=10.0.0.5:8084,sink-2=10.0.0.6:8084 (env SURGE_STATUS_ADMIN)")
	shards := flags.Int("shards", 0, "number of shards (0: found from the consumers, leases and ClickHouse)")
	watch := flags.Bool("watch", false, "refresh in place every --interval until Ctrl-C")
	asJSON := flags.Bool("json", false, "print the report as JSON")
	interval := flags.Duration("interval", time.Second, "time between looks: rows/s compares two looks this far apart")
	maxLag := flags.Duration("max-lag", status.DefaultThresholds().MaxLag, "a shard whose oldest waiting message is older is lagging")
	stall := flags.Duration("stall", status.DefaultThresholds().Stall, "a shard with work waiting and no progress for this long is stalled")
	streamFull := flags.Float64("stream-full", status.DefaultThresholds().StreamFull, "a stream holding more than this fraction of its byte or message limit is nearly full")
	pendingDDL := flags.Duration("pending-ddl", status.DefaultThresholds().PendingDDL, "warn of a typed column agreed this long ago and still missing on a ClickHouse server")
	timeout := flags.Duration("timeout", 5*time.Second, "bound on each request")
	flags.Usage = func() {
		fmt.Fprint(stderr, statusUsage)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return statusHealthy
		}
		return statusFailed
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "surge status: unexpected arguments %q\n", flags.Args())
		return statusFailed
	}
	if *interval <= 0 {
		fmt.Fprintln(stderr, "surge status: --interval must be positive")
		return statusFailed
	}
	cfg, err := where.config(flags, map[string]string{"admin": *admin})
	if err != nil {
		fmt.Fprintf(stderr, "surge status: %v\n", err)
		return statusFailed
	}
	cfg.Shards, cfg.Timeout = *shards, *timeout
	th := status.Thresholds{MaxLag: *maxLag, Stall: *stall, StreamFull: *streamFull, PendingDDL: *pendingDDL}

	c, err := status.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "surge status: %v\n", err)
		return statusFailed
	}
	defer c.Close()

	show := func(r *status.Report) error {
		if *asJSON {
			return status.JSON(stdout, r)
		}
		var buf bytes.Buffer
		if *watch {
			buf.WriteString("\x1b[H\x1b[2J") // home, clear: the screen is redrawn in place
		}
		if err := status.Render(&buf, r); err != nil {
			return err
		}
		_, err := stdout.Write(buf.Bytes())
		return err
	}

	// The first look only primes rows/s, unless it cannot be read.
	if _, err := c.Collect(ctx); err != nil {
		fmt.Fprintf(stderr, "surge status: %v\n", err)
		return statusFailed
	}
	code := statusFailed
	for {
		select {
		case <-ctx.Done():
			return code
		case <-time.After(*interval):
		}
		r, err := c.Collect(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return code
		case err != nil:
			fmt.Fprintf(stderr, "surge status: %v\n", err)
			code = statusFailed
		default:
			r.Judge(th)
			if err := show(r); err != nil {
				fmt.Fprintf(stderr, "surge status: %v\n", err)
				return statusFailed
			}
			code = statusHealthy
			if !r.Healthy {
				code = statusUnhealthy
				if !*watch {
					fmt.Fprintf(stderr, "surge status: unhealthy: %s\n", status.Summary(r.Problems))
				}
			}
		}
		if !*watch {
			return code
		}
	}
}

// statusEnv maps each setting to the environment variable read when its
// flag is not given.
var statusEnv = map[string]string{
	"nats": "SURGE_NATS_URL", "user": "SURGE_NATS_USER", "password": "SURGE_NATS_PASSWORD",
	"clickhouse": "SURGE_CLICKHOUSE_ADDRS", "clickhouse-user": "SURGE_CLICKHOUSE_USERNAME",
	"clickhouse-password": "SURGE_CLICKHOUSE_PASSWORD", "database": "SURGE_CLICKHOUSE_DATABASE",
	"table": "SURGE_SCHEMA_TABLE", "admin": "SURGE_STATUS_ADMIN",
}

// statusConfig resolves each setting from its flag, else its environment
// variable, else the local stack's stack.json, read unless NATS was named
// by flag or environment (and --dir was not given).
// stackFlags are the flags that say where a stack's NATS and ClickHouse
// are, shared by surge status and surge schema; each falls back to its
// SURGE_* variable, then to the local stack's stack.json (statusConfig).
type stackFlags struct {
	dir    *string
	values map[string]*string
}

// addStackFlags registers the stack flags on fs; tableUsage describes
// --table for the command.
func addStackFlags(fs *flag.FlagSet, tableUsage string) *stackFlags {
	f := &stackFlags{values: map[string]*string{}}
	f.dir = fs.String("dir", ".surge", "data `folder` of the local stack, whose stack.json says where it listens")
	for _, d := range []struct{ name, usage string }{
		{"nats", "NATS `URLs`, comma separated (env SURGE_NATS_URL)"},
		{"user", "NATS user (env SURGE_NATS_USER)"},
		{"password", "NATS password (env SURGE_NATS_PASSWORD)"},
		{"clickhouse", "ClickHouse shard servers' native `addresses`, comma separated, replicas joined by | (env SURGE_CLICKHOUSE_ADDRS)"},
		{"clickhouse-user", "ClickHouse user (env SURGE_CLICKHOUSE_USERNAME)"},
		{"clickhouse-password", "ClickHouse password (env SURGE_CLICKHOUSE_PASSWORD)"},
		{"database", "ClickHouse database of events_local (env SURGE_CLICKHOUSE_DATABASE; default surge)"},
		{"table", tableUsage},
	} {
		f.values[d.name] = fs.String(d.name, "", d.usage)
	}
	return f
}

// config is where the parsed fs says the stack is; extra are the
// command's own flags that statusConfig also resolves (admin).
func (f *stackFlags) config(fs *flag.FlagSet, extra map[string]string) (status.Config, error) {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	values := make(map[string]string, len(f.values)+len(extra))
	for name, v := range f.values {
		values[name] = *v
	}
	maps.Copy(values, extra)
	return statusConfig(set, *f.dir, values)
}

func statusConfig(set map[string]bool, dir string, flags map[string]string) (status.Config, error) {
	v := map[string]string{}
	for name, val := range flags {
		if set[name] {
			v[name] = val
		} else if env, ok := os.LookupEnv(statusEnv[name]); ok {
			v[name] = env
		}
	}
	if _, named := v["nats"]; !named || set["dir"] {
		info, err := stack.ReadInfo(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !named {
				return status.Config{}, fmt.Errorf("no local stack in %s (start one with `go tool task up`) and no --nats or SURGE_NATS_URL", dir)
			}
		case err != nil:
			return status.Config{}, err
		default:
			fromInfo(v, info)
		}
	}
	cfg := status.Config{
		NATSURL: v["nats"], NATSUser: v["user"], NATSPassword: v["password"],
		ClickHouseUser: v["clickhouse-user"], ClickHousePassword: v["clickhouse-password"], Database: v["database"],
		SchemaTable: v["table"],
	}
	cfg.ClickHouse = splitList(v["clickhouse"])
	eps, err := parseAdmin(v["admin"])
	if err != nil {
		return cfg, err
	}
	cfg.Admin = eps
	return cfg, nil
}

// fromInfo fills the settings not given from a local stack's stack.json.
func fromInfo(v map[string]string, info stack.Info) {
	fill := func(name, val string) {
		if _, ok := v[name]; !ok && val != "" {
			v[name] = val
		}
	}
	fill("nats", info.NATSURL)
	if _, ok := v["user"]; !ok {
		fill("user", info.NATSUser)
		fill("password", info.NATSPassword)
	}
	chs := info.ClickHouse
	if len(info.ClickHouseReplicas) > 0 {
		chs = nil
		for _, replicas := range info.ClickHouseReplicas {
			chs = append(chs, strings.Join(replicas, "|"))
		}
	}
	fill("clickhouse", strings.Join(chs, ","))
	fill("database", info.Database)
	names := make([]string, 0, len(info.Admin))
	for name := range info.Admin {
		names = append(names, name)
	}
	// Pipeline order, then by name: ingest, partitioner, batcher, sink.
	sort.Slice(names, func(i, j int) bool {
		si, sj := serviceRank(names[i]), serviceRank(names[j])
		if si != sj {
			return si < sj
		}
		return names[i] < names[j]
	})
	admin := make([]string, len(names))
	for i, name := range names {
		admin[i] = name + "=" + info.Admin[name]
	}
	fill("admin", strings.Join(admin, ","))
}

var statusServices = []string{"ingest", "partitioner", "batcher", "sink"}

func serviceRank(name string) int {
	if i := slices.Index(statusServices, serviceOf(name)); i >= 0 {
		return i
	}
	return len(statusServices)
}

// serviceOf is the service an instance name starts with: "sink-2" is a sink.
func serviceOf(name string) string {
	for _, s := range statusServices {
		if name == s || strings.HasPrefix(name, s+"-") || strings.HasPrefix(name, s+"_") {
			return s
		}
	}
	return ""
}

// parseAdmin reads name=host:port entries.
func parseAdmin(list string) ([]status.Endpoint, error) {
	var out []status.Endpoint
	for _, entry := range splitList(list) {
		name, addr, ok := strings.Cut(entry, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("admin entry %q is not name=host:port", entry)
		}
		svc := serviceOf(name)
		if svc == "" {
			return nil, fmt.Errorf("admin entry %q: the name must start with its service (%s)", entry, strings.Join(statusServices, ", "))
		}
		addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://")
		out = append(out, status.Endpoint{Name: name, Service: svc, Addr: strings.TrimSuffix(addr, "/")})
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
