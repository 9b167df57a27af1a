package stack

import (
	"flag"
	"os"

	"github.com/surge-events/surge/pkg/testkit/natsserver"
)

// NATSSyncFlag registers --nats-sync on fs, SURGE_NATS_SYNC by default:
// `surge up` and `surge bench` take it alike.
func NATSSyncFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("SURGE_NATS_SYNC")
	if def == "" {
		def = string(natsserver.SyncInterval)
	}
	return fs.String("nats-sync", def, "when JetStream flushes to disk: `interval` (every 2 minutes, nats-server's default) or always (before every acknowledgement); default $SURGE_NATS_SYNC or interval")
}
