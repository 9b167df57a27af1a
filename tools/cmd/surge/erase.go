package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/surge-events/surge/pkg/erasure"
)

const eraseUsage = `Usage: surge erase [flags] --tenant T --user U [--user U2 ...] [--users-file F] [--before TIME]
       surge erase status [REQUEST]

(The NATS login is --nats-user and --nats-password here: --user names a
user to erase.)

Erases users' data (docs/erasure.md): their new events are refused from
the moment the request is taken, the events already on their way never
land, their rows are deleted on every replica of every ClickHouse shard
and their dead letters are removed. The sink's eraser does the deletion;
"surge erase status" follows it (requested, suppressed, landed-past,
deleted, verified).

--before TIME (RFC 3339) erases only the events whose ts is before TIME,
and refuses only those later: the user's other events stay and flow.

Flags:
`

// eraseCmd is `surge erase`.
func eraseCmd(args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return runErase(ctx, args, os.Stdout)
}

// userList collects --user flags.
type userList []string

func (u *userList) String() string     { return strings.Join(*u, ",") }
func (u *userList) Set(v string) error { *u = append(*u, v); return nil }

func runErase(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("erase", flag.ContinueOnError)
	fs.SetOutput(out)
	// --user names a user to erase here, so the NATS login is
	// --nats-user and --nats-password.
	conn := natsFlags{
		dir:      fs.String("dir", ".surge", "data `folder` of the running local stack, whose stack.json names NATS"),
		url:      fs.String("nats", "", "NATS `URL` (default: the local stack's, else "+nats.DefaultURL+")"),
		user:     fs.String("nats-user", "", "NATS user (default: the local stack's)"),
		password: fs.String("nats-password", "", "NATS password"),
	}
	replicas := fs.Int("replicas", 1, "replicas of the bucket when it is created (the streams' count)")
	tenant := fs.String("tenant", "", "the users' tenant")
	var users userList
	fs.Var(&users, "user", "a user id to erase (repeat for more)")
	usersFile := fs.String("users-file", "", "a file of user ids to erase, one a line")
	before := fs.String("before", "", "erase only events whose ts is before this RFC 3339 time")
	fs.Usage = func() {
		fmt.Fprint(out, eraseUsage)
		fs.PrintDefaults()
	}
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	status := len(rest) > 0 && rest[0] == "status"
	if len(rest) > 0 && !status || len(rest) > 2 {
		fs.Usage()
		return fmt.Errorf("unknown arguments %q", rest)
	}
	var sub erasure.Submission
	if !status {
		sub = erasure.Submission{Tenant: *tenant, Users: users}
		if *usersFile != "" {
			more, err := readUsers(*usersFile)
			if err != nil {
				return err
			}
			sub.Users = append(sub.Users, more...)
		}
		if *before != "" {
			t, err := time.Parse(time.RFC3339, *before)
			if err != nil {
				return fmt.Errorf("--before: %w", err)
			}
			sub.Before = t
		}
		if err := sub.Validate(); err != nil {
			return err
		}
	}

	nc, js, err := conn.connect("surge-erase")
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := erasure.Open(ctx, js, *replicas)
	if err != nil {
		return err
	}
	if status {
		if len(rest) == 2 {
			r, err := st.Get(ctx, rest[1])
			if err != nil {
				return err
			}
			printErasure(out, []*erasure.Request{r}, true)
			return nil
		}
		reqs, err := st.List(ctx)
		if err != nil {
			return err
		}
		printErasure(out, reqs, false)
		return nil
	}
	r, err := st.Submit(ctx, sub, time.Now())
	if r == nil {
		return err
	}
	if err != nil {
		fmt.Fprintf(out, "warning: %v\n", err)
	}
	fmt.Fprintf(out, "erasure request %s: %d users of tenant %s suppressed; follow it with: surge erase status %s\n",
		r.ID, r.UserCount, r.Tenant, r.ID)
	return nil
}

// readUsers reads one user id a line, skipping blank lines.
func readUsers(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var users []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if u := strings.TrimSpace(sc.Text()); u != "" {
			users = append(users, u)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(users) == 0 {
		return nil, errors.New(path + " holds no user id")
	}
	return users, nil
}

// printErasure lists requests, or one in full (detail).
func printErasure(out io.Writer, reqs []*erasure.Request, detail bool) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "REQUEST\tREQUESTED\tTENANT\tUSERS\tBEFORE\tSTATE\tROWS DELETED\tDEAD LETTERS\tVERIFIED")
	for _, r := range reqs {
		var rows uint64
		for _, n := range r.RowsDeleted {
			rows += n
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", r.ID, r.RequestedAt.Format(time.RFC3339), r.Tenant,
			r.UserCount, timeOrDash(r.Before), r.State, rows, r.DeadLetters, timeOrDash(r.VerifiedAt))
	}
	if !detail || len(reqs) != 1 {
		return
	}
	r := reqs[0]
	tw.Flush()
	fmt.Fprintf(out, "\nrows deleted per ClickHouse shard: %v\ndeletion batch: %s\nlanding marks (shard: events/batches seq): %v\n",
		r.RowsDeleted, orDash(r.Batch), r.Marks)
	if r.LastError != "" {
		fmt.Fprintf(out, "last error (retried): %s\n", r.LastError)
	}
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}
