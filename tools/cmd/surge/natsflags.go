package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/tools/stack"
)

// natsFlags are the flags of a command that talks to the stack's NATS:
// the local stack's (its stack.json) unless given.
type natsFlags struct {
	dir, url, user, password *string
}

func addNATSFlags(fs *flag.FlagSet) natsFlags {
	return natsFlags{
		dir:      fs.String("dir", ".surge", "data `folder` of the running local stack, whose stack.json names NATS"),
		url:      fs.String("nats", "", "NATS `URL` (default: the local stack's, else "+nats.DefaultURL+")"),
		user:     fs.String("user", "", "NATS user (default: the local stack's)"),
		password: fs.String("password", "", "NATS password"),
	}
}

// connect connects to NATS as the flags say, naming the client name.
func (f natsFlags) connect(name string) (*nats.Conn, jetstream.JetStream, error) {
	url, u, p := *f.url, *f.user, *f.password
	if url == "" || u == "" {
		if info, err := stack.ReadInfo(*f.dir); err == nil {
			if url == "" {
				url = info.NATSURL
			}
			if u == "" {
				u, p = info.NATSUser, info.NATSPassword
			}
		}
	}
	if url == "" {
		url = nats.DefaultURL
	}
	opts := []nats.Option{nats.Name(name), nats.Timeout(5 * time.Second)}
	if u != "" {
		opts = append(opts, nats.UserInfo(u, p))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// parseInterspersed parses fs's flags wherever they stand among the
// arguments (`replay --all`, `set acme --burst 5`) and returns the
// arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for remaining := args; ; {
		if err := fs.Parse(remaining); err != nil {
			return nil, err
		}
		remaining = fs.Args()
		if len(remaining) == 0 {
			return rest, nil
		}
		rest, remaining = append(rest, remaining[0]), remaining[1:]
	}
}
