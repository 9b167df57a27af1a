package main

import (
	"flag"
	"fmt"

	"github.com/nats-io/nats-server/v2/server"
)

// natsServerCommand is the hidden subcommand that runs the nats-server
// surge embeds (the same release natscluster pins), with nats-server's own
// flags: `surge nats-server -c nats.conf`. `surge up --cluster` runs its
// NATS nodes through it, so a fresh clone needs no nats-server installed.
const natsServerCommand = "nats-server"

// natsServer runs one NATS node until a signal stops it, as nats-server's
// main does: the server handles SIGINT and SIGTERM itself.
func natsServer(args []string) error {
	fs := flag.NewFlagSet(natsServerCommand, flag.ExitOnError)
	opts, err := server.ConfigureOptions(fs, args, server.PrintServerAndExit, fs.Usage, server.PrintTLSHelpAndDie)
	if err != nil {
		return fmt.Errorf("options: %w", err)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("new server: %w", err)
	}
	s.ConfigureLogger()
	if err := server.Run(s); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	s.WaitForShutdown()
	return nil
}
