// Package failpoint freezes the process at a named point of its work, so
// a test can SIGKILL it in exactly that state: between two steps whose
// order matters for exactly-once (a schema change and its ALTER, an ALTER
// and the insert's ack), which a kill from outside at a random moment
// reaches only by chance.
//
// A point is armed by naming it in the SURGE_FAILPOINT environment
// variable of the process; unarmed, Stop costs one string comparison.
// The process stops itself with SIGSTOP rather than dying: a test sees it
// stopped (state T in /proc) and kills it and everything it started, as
// it kills a stack at any other moment.
package failpoint

import (
	"os"
	"syscall"
)

// Env names the variable that arms a point.
const Env = "SURGE_FAILPOINT"

// The points the services pass.
const (
	// BatcherSchemaWritten: a batcher's schema proposal was written to the
	// schema bucket; the batch that proposed it is not projected or
	// published yet.
	BatcherSchemaWritten = "batcher-schema-written"
	// SinkColumnAdded: the sink added a batch's new columns to a replica's
	// table (ALTER done); the batch is not inserted yet.
	SinkColumnAdded = "sink-column-added"
	// SinkInsertedNewColumn: the sink inserted a batch it had added
	// columns for; the batch is not acked yet.
	SinkInsertedNewColumn = "sink-inserted-new-column"
)

var armed = os.Getenv(Env)

// Stop freezes the process with SIGSTOP when point is armed.
func Stop(point string) {
	if armed != "" && armed == point {
		_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	}
}
