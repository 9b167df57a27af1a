// Package status reads what an operator needs on one screen from a
// running Surge deployment: per shard who owns it, what waits in EVENTS
// and BATCHES and for how long, what ClickHouse holds and how fast it
// grows, and the dead letters; per stream its fill against its limit and
// its replicas; per service instance whether it is ready and why not;
// per table of typed columns its columns against their limit, the
// columns agreed and not yet on every ClickHouse server, and the
// conflicts. Collect gathers a Report from NATS JetStream, ClickHouse and
// the admin endpoints; Assess, pure, decides what is unhealthy and Warn
// what is worth a look; Render and JSON print it.
package status

import (
	"fmt"
	"time"
)

// Report is one look at a deployment.
type Report struct {
	// Time is when the look was taken; every age is relative to it.
	Time time.Time `json:"time"`
	// NATS is the server the report was read from.
	NATS string `json:"nats"`
	// Healthy is true when Problems is empty.
	Healthy  bool      `json:"healthy"`
	Problems []Problem `json:"problems"`
	// Warnings are worth a look and leave the report healthy.
	Warnings []Problem `json:"warnings"`
	// Ownership says, for the batcher and the sink, how shards are owned:
	// "lease" (keys in the SURGE_LEASES bucket) or "static"; "unknown"
	// while the lease bucket could not be read.
	Ownership map[string]string `json:"ownership"`
	// LeasesUnreadable says why the lease bucket could not be read.
	LeasesUnreadable string `json:"leases_unreadable,omitempty"`
	// Ingest is what waits in INGEST for the partitioner.
	Ingest Backlog `json:"ingest"`
	Shards []Shard `json:"shards"`
	// Streams are INGEST, EVENTS, BATCHES and DEAD_LETTER.
	Streams []Stream `json:"streams"`
	// DeadLetters counts DEAD_LETTER's messages by subject.
	DeadLetters map[string]uint64 `json:"dead_letters"`
	Instances   []Instance        `json:"instances"`
	ClickHouse  []Server          `json:"clickhouse"`
	// Schemas are the tables of the schema bucket (SURGE_SCHEMA), by name;
	// empty when no batcher with typed columns has started.
	Schemas []TableSchema `json:"schemas"`
	// SchemaUnreadable says why the schema bucket could not be read.
	SchemaUnreadable string `json:"schema_unreadable,omitempty"`
}

// TableSchema is one table's typed columns.
type TableSchema struct {
	Table string `json:"table"`
	// Revision is the schema document's revision in the bucket.
	Revision uint64 `json:"revision"`
	// Columns counts the agreed typed columns; Limit is the most the
	// table may have: the lowest surge_schema_column_limit a batcher
	// reports for it (LimitFrom "batchers"), else schema.max_columns'
	// default (LimitFrom "default").
	Columns   int    `json:"columns"`
	Limit     int    `json:"limit"`
	LimitFrom string `json:"limit_from"`
	// Failed names, sorted, the columns whose DDL failed for good:
	// batchers no longer fill them.
	Failed []string `json:"failed,omitempty"`
	// Checked says Pending was read: the table is the one whose rows land
	// in events_local (Config.SchemaTable) and a ClickHouse server
	// answered.
	Checked bool `json:"checked"`
	// Pending are the agreed columns (failed ones aside) that some
	// answering ClickHouse server's events_local lacks: DDL the sink has
	// still to run there. By name.
	Pending []PendingColumn `json:"pending,omitempty"`
	// Conflicts counts the property values that did not fit their column
	// and Rows the rows published, both since the reporting batchers
	// started (surge_schema_conflicts_total, surge_batcher_rows_total);
	// nil when no batcher reports them.
	Conflicts *uint64 `json:"conflicts,omitempty"`
	Rows      *uint64 `json:"rows,omitempty"`
}

// PendingColumn is an agreed column missing on some server.
type PendingColumn struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// Added is when the column was agreed.
	Added time.Time `json:"added"`
	// Missing lists the servers (replica addresses) whose events_local
	// lacks it.
	Missing []string `json:"missing"`
}

// Backlog is what waits for one consumer.
type Backlog struct {
	// Consumer reads the work; empty when no consumer does.
	Consumer string `json:"consumer,omitempty"`
	// Pending counts the messages waiting: not yet delivered, or
	// delivered and not yet acknowledged.
	Pending uint64 `json:"pending"`
	// Oldest is the stream timestamp of the oldest waiting message.
	Oldest *time.Time `json:"oldest,omitempty"`
	// OldestAgeSeconds is the age of Oldest at the report's Time.
	OldestAgeSeconds float64 `json:"oldest_age_seconds"`
	// LastProgress is when the consumer last moved: its last ack, or for a
	// consumer without acks (the batcher's) its last delivery.
	LastProgress *time.Time `json:"last_progress,omitempty"`
}

// Shard is one logical shard.
type Shard struct {
	Shard int `json:"shard"`
	// BatcherOwner and SinkOwner name the instances that work on the
	// shard: the lease holder's instance id in lease mode; in static mode
	// the admin instances that run it, or "static" when none was asked.
	// Empty when nobody owns it.
	BatcherOwner string `json:"batcher_owner"`
	SinkOwner    string `json:"sink_owner"`
	// Events is what waits in EVENTS for the batcher, Batches what waits
	// in BATCHES for the sink.
	Events  Backlog `json:"events"`
	Batches Backlog `json:"batches"`
	// Watermark is the highest EVENTS sequence ClickHouse holds for the
	// shard (from ClickHouse, else the sinks' surge_sink_watermark); nil
	// when unknown.
	Watermark *uint64 `json:"watermark"`
	// Rows is the shard's row count in ClickHouse; nil when its server did
	// not answer.
	Rows *uint64 `json:"rows"`
	// RowsPerSecond is the growth of Rows since the previous look; nil
	// without one.
	RowsPerSecond *float64 `json:"rows_per_second"`
	// LastInsert is when the sink last acknowledged a batch of the shard,
	// which it does once ClickHouse holds it.
	LastInsert *time.Time `json:"last_insert,omitempty"`
	// DeadLetters counts the shard's dead letters (batcher and sink).
	DeadLetters uint64 `json:"dead_letters"`
}

// Stream is one JetStream stream.
type Stream struct {
	Name string `json:"name"`
	// Missing is true when the stream does not exist.
	Missing bool `json:"missing,omitempty"`
	// Unreadable says why the stream, or its consumers, could not be read
	// (a NATS node that stalls, an election); the rest of the look stands.
	Unreadable string `json:"unreadable,omitempty"`
	Messages   uint64 `json:"messages"`
	Bytes      uint64 `json:"bytes"`
	// MaxBytes and MaxMsgs are the stream's limits; -1 or 0 is none.
	MaxBytes int64 `json:"max_bytes"`
	MaxMsgs  int64 `json:"max_msgs"`
	// Replicas is the configured replica count, Current how many of them
	// (the leader included) are up to date.
	Replicas int    `json:"replicas"`
	Current  int    `json:"current"`
	Leader   string `json:"leader,omitempty"`
	// Behind names the replicas that are not current ("n3 (offline)").
	Behind []string `json:"behind,omitempty"`
}

// Instance is one service process, as its admin endpoint answers.
type Instance struct {
	Name    string `json:"name"`
	Service string `json:"service"`
	Addr    string `json:"addr"`
	Ready   bool   `json:"ready"`
	// Reasons are its failing readiness checks ("stalled shard 3: ..."),
	// or why it could not be asked.
	Reasons []string `json:"reasons,omitempty"`
}

// Server is one ClickHouse shard server (an entry of its replicas).
type Server struct {
	Addr string `json:"addr"`
	// Error is why no replica answered; empty when one did.
	Error string `json:"error,omitempty"`
}

// Kinds of Problem.
const (
	KindStalled     = "stalled"      // work waits and nothing moved for the stall threshold
	KindLagging     = "lagging"      // the oldest waiting message is older than the lag threshold
	KindUnowned     = "unowned"      // no instance owns the shard
	KindNoConsumer  = "no consumer"  // nothing reads the shard's subject
	KindStreamFull  = "stream full"  // a stream holds more than the fill threshold of its limit
	KindReplicas    = "replicas"     // a stream's replicas are not all current, or it has no leader
	KindMissing     = "missing"      // a stream does not exist
	KindDeadLetters = "dead letters" // DEAD_LETTER holds messages
	KindNotReady    = "not ready"    // an instance's /readyz fails or does not answer
	KindUnreachable = "unreachable"  // no replica of a ClickHouse server answered
	KindUnreadable  = "unreadable"   // a stream, its consumers or the lease bucket did not answer
)

// Kinds of warning: worth a look, and the report stays healthy, since
// none of them loses or holds up a row. A row keeps every property in
// properties whatever its typed columns; the sink retries a column's DDL
// until it lands; and when a missing column does hold inserts up, the
// shard's stall or lag is the problem that says so.
const (
	// KindPendingDDL: a column agreed longer ago than Thresholds.PendingDDL
	// is missing on some ClickHouse server.
	KindPendingDDL = "pending DDL"
	// KindDDLFailed: the registry gave up on columns' DDL; their values
	// stay in properties only.
	KindDDLFailed = "DDL failed"
	// KindColumnLimit: a table holds its limit of typed columns, so new
	// keys stay unpromoted.
	KindColumnLimit = "column limit"
	// KindSchemaUnreadable: the schema bucket did not answer.
	KindSchemaUnreadable = "schema unreadable"
)

// Problem is one reason a report is unhealthy.
type Problem struct {
	Kind string `json:"kind"`
	// Subject is what is unhealthy: "shard 3", "stream EVENTS", "sink".
	Subject string `json:"subject"`
	// Shard is the shard concerned, -1 for none.
	Shard  int    `json:"shard"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return fmt.Sprintf("%s %s: %s", p.Subject, p.Kind, p.Detail) }

// Thresholds decide when a backlog or a stream is unhealthy.
type Thresholds struct {
	// MaxLag is the age of the oldest waiting message from which a shard
	// is lagging.
	MaxLag time.Duration
	// Stall is how long work may wait without any progress before the
	// shard is stalled (the services' stall_timeout is 30s).
	Stall time.Duration
	// StreamFull is the fraction of a stream's limit from which it is
	// nearly full.
	StreamFull float64
	// PendingDDL is how long after it was agreed a column may be missing
	// on a ClickHouse server before a warning names it: the sink adds
	// columns within seconds.
	PendingDDL time.Duration
}

// DefaultThresholds: lagging at 15 s, stalled after 30 s without
// progress, a stream nearly full at 80 %, DDL pending for a minute.
func DefaultThresholds() Thresholds {
	return Thresholds{MaxLag: 15 * time.Second, Stall: 30 * time.Second, StreamFull: 0.8, PendingDDL: time.Minute}
}
