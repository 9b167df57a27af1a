// Command surge runs Surge on one machine: `surge up` brings the whole
// stack up, `surge bench` measures it, `surge query` reads it back.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/surge-events/surge/tools/bench"
)

const usage = `Usage: surge <command> [flags]

Commands:
  up      run the whole stack locally until Ctrl-C
  bench   start a stack, drive load, print throughput and latency
  query   run SQL against the local stack's ClickHouse (events, events_local)
  status  one screen of the stack's health: shards, backlog, streams, instances (exit 1 when unhealthy)
  setup   install clickhouse-server and mosquitto-clients where missing (apt-get, as root)
  deadletter list | show SEQ | replay SEQ... | replay --all
          inspect and replay what the pipeline could not process
  tenants list | set TENANT|--default [limits] | unset TENANT|--default
          per-tenant quotas (events/s, burst, bytes/s), applied at run time
  erase   --tenant T --user U [--users-file F] [--before TIME] | status [REQUEST]
          erase users' data: refuse their events, delete their rows and dead letters
  problems [--tenant T] [--since 1h]
          each tenant's problems (GET /v1/problems): dead-lettered events,
          typed-column conflicts, unpromoted keys, unknown keys
  schema  ls | conflicts | unpromoted
          the typed columns agreed and in ClickHouse, with fill rates; the
          property paths that conflict with their column or stay unpromoted
  nats-server
          the nats-server surge embeds, with nats-server's own flags (-c FILE);
          up --cluster runs its NATS nodes with it

Run "surge <command> -h" for the flags of a command.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "bench":
		err = bench.Run(os.Args[2:])
	case "query":
		err = query(os.Args[2:])
	case "deadletter":
		err = deadLetter(os.Args[2:])
	case "schema":
		err = schemaCmd(os.Args[2:])
	case "problems":
		err = problemsCmd(os.Args[2:])
	case "tenants":
		err = tenantsCmd(os.Args[2:])
	case "erase":
		err = eraseCmd(os.Args[2:])
	case "status":
		os.Exit(statusCmd(os.Args[2:]))
	case "setup":
		err = setup(context.Background())
	case natsServerCommand:
		err = natsServer(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "surge: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "surge %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
