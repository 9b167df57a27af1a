// Package streams names Surge's JetStream streams, subjects and headers,
// and creates or updates the streams at start-up.
package streams

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names.
const (
	Ingest     = "INGEST"
	Events     = "EVENTS"
	Batches    = "BATCHES"
	DeadLetter = "DEAD_LETTER"
	Problems   = "PROBLEMS"
)

// Headers Surge sets on its messages, besides Nats-Msg-Id and traceparent.
const (
	// HeaderBatchID carries "<shard>:<first>-<last>" on BATCHES messages.
	HeaderBatchID = "Surge-Batch-Id"
	// HeaderFirstSeq and HeaderLastSeq carry the EVENTS sequence range of a batch.
	HeaderFirstSeq = "Surge-First-Seq"
	HeaderLastSeq  = "Surge-Last-Seq"
	// HeaderRows carries the row count of a batch or message.
	HeaderRows = "Surge-Rows"
	// HeaderReason carries why a message was dead-lettered.
	HeaderReason = "Surge-Reason"
	// HeaderSource carries the subject a dead letter came from.
	HeaderSource = "Surge-Source"
	// HeaderSourceSeq carries the stream sequence a dead letter came from.
	HeaderSourceSeq = "Surge-Source-Seq"
	// HeaderSourceIndex carries the position, within its source message,
	// of an event dead-lettered on its own.
	HeaderSourceIndex = "Surge-Source-Index"
	// HeaderTenant carries the tenant of a dead-lettered producer event.
	HeaderTenant = "Surge-Tenant"
	// HeaderProblems carries the JSON list of problems of a dead-lettered
	// event ([{"index":0,"field":"type","reason":"required"}]).
	HeaderProblems = "Surge-Problems"
	// HeaderReplay marks a dead letter put back into its source subject
	// (value: its DEAD_LETTER sequence). The sink inserts a replayed batch's
	// rows that ClickHouse does not hold yet, whatever the watermark.
	HeaderReplay = "Surge-Replay"
)

// IngestSubject is where ingest publishes the events of a tenant.
func IngestSubject(tenant string) string { return "ingest." + tenant }

// ProducerPrefix starts every subject NATS and MQTT producers publish to:
// surge.in.<tenant>.<anything>. INGEST captures it; the tenant is the
// third token, and the producer's credentials allow only their tenant's.
const ProducerPrefix = "surge.in."

// ProducerSubjects are the subjects a tenant's producer may publish to:
// surge.in.<tenant> and everything below it.
func ProducerSubjects(tenant string) []string {
	return []string{ProducerPrefix + tenant, ProducerPrefix + tenant + ".>"}
}

// ProducerInboxPrefix is the inbox prefix of a tenant's producers: their
// PubAcks arrive below it (nats.CustomInboxPrefix, nats --inbox-prefix),
// so no producer can read another's replies or a service's fetches.
func ProducerInboxPrefix(tenant string) string { return "_INBOX_" + tenant }

// ProducerTenant returns the tenant token of a producer subject, and false
// when subject is not one (the tenant is not checked for validity here).
func ProducerTenant(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, ProducerPrefix)
	if !ok {
		return "", false
	}
	tenant, _, _ := strings.Cut(rest, ".")
	return tenant, tenant != ""
}

// InvalidSubject is where the partitioner dead-letters a producer's
// invalid events and malformed messages.
func InvalidSubject(tenant string) string { return "deadletter.partitioner.invalid." + tenant }

// EventsSubject is the subject of one shard in EVENTS.
func EventsSubject(shard int) string { return "events.shard." + strconv.Itoa(shard) }

// BatchesSubject is the subject of one shard in BATCHES.
func BatchesSubject(shard int) string { return "batches.shard." + strconv.Itoa(shard) }

// LandedSubject is where the sink says, on core NATS (no stream), that it
// has landed a batch of the shard: the payload is the batch's last EVENTS
// sequence in decimal. The batcher cuts the shard's next batch early while
// the sink has landed every batch before it (batch.Policy.MinAge). A
// notice lost costs only that early cut.
func LandedSubject(shard int) string { return LandedPrefix + strconv.Itoa(shard) }

// LandedPrefix is LandedSubject without its shard; LandedSubject(k) is
// LandedPrefix + k, and LandedPrefix + "*" subscribes to every shard.
const LandedPrefix = "sink.landed.shard."

// DeadLetterSubject is where a service puts what it cannot process.
func DeadLetterSubject(service string, shard int) string {
	return "deadletter." + service + ".shard." + strconv.Itoa(shard)
}

// ProblemsSubject is where the aggregated problems of a tenant's events
// are kept (pkg/problems), for the tenant's GET /v1/problems.
func ProblemsSubject(tenant string) string { return "problems." + tenant }

// ProblemsAll is every tenant's problems subject.
const ProblemsAll = "problems.>"

// Config sizes the streams. Sizes are per stream.
type Config struct {
	// Replicas is the stream replica count: 1 for one server, 3 in a cluster.
	Replicas int `yaml:"replicas" env:"REPLICAS"`
	// MaxBytes bounds each of INGEST, EVENTS and BATCHES. When one is full,
	// publishes into it fail and the pressure reaches ingest as 503.
	MaxBytes int64 `yaml:"max_bytes" env:"MAX_BYTES"`
	// DeadLetterMaxAge is how long dead letters are kept.
	DeadLetterMaxAge time.Duration `yaml:"dead_letter_max_age" env:"DEAD_LETTER_MAX_AGE"`
	// ProblemsMaxAge is how long the aggregated problems of tenants'
	// events are kept in PROBLEMS.
	ProblemsMaxAge time.Duration `yaml:"problems_max_age" env:"PROBLEMS_MAX_AGE"`
	// ProblemsMaxBytes bounds PROBLEMS; when full, its oldest problems go.
	ProblemsMaxBytes int64 `yaml:"problems_max_bytes" env:"PROBLEMS_MAX_BYTES"`
	// ProblemsMaxPerTenant bounds the problems kept per tenant (messages
	// per subject); past it a tenant's oldest go, so one noisy tenant
	// cannot push the others' out.
	ProblemsMaxPerTenant int64 `yaml:"problems_max_per_tenant" env:"PROBLEMS_MAX_PER_TENANT"`
	// DuplicateWindow is how long JetStream remembers message ids: the
	// window in which a client retry with the same Idempotency-Key is dropped.
	DuplicateWindow time.Duration `yaml:"duplicate_window" env:"DUPLICATE_WINDOW"`
	// MaxMsgSize is the largest message; it must hold a whole batch and fit
	// the server's max_payload.
	MaxMsgSize int32 `yaml:"max_msg_size" env:"MAX_MSG_SIZE"`
}

// DefaultConfig suits one server on a development machine.
func DefaultConfig() Config {
	return Config{
		Replicas:         1,
		MaxBytes:         8 << 30,
		DeadLetterMaxAge: 14 * 24 * time.Hour,
		DuplicateWindow:  2 * time.Minute,
		MaxMsgSize:       8 << 20,

		ProblemsMaxAge:       7 * 24 * time.Hour,
		ProblemsMaxBytes:     256 << 20,
		ProblemsMaxPerTenant: 10000,
	}
}

// Validate reports every problem of the stream settings.
func (c Config) Validate() error {
	var errs []error
	if c.Replicas < 1 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replicas must be 1 to 5, got %d", c.Replicas))
	}
	if c.MaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("max_bytes must be at least 1 MiB, got %d", c.MaxBytes))
	}
	if c.DuplicateWindow < time.Second {
		errs = append(errs, fmt.Errorf("duplicate_window must be at least 1s, got %s", c.DuplicateWindow))
	}
	if c.DeadLetterMaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("dead_letter_max_age must be at least 1m, got %s", c.DeadLetterMaxAge))
	}
	if c.ProblemsMaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("problems_max_age must be at least 1m, got %s", c.ProblemsMaxAge))
	}
	if c.ProblemsMaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("problems_max_bytes must be at least 1 MiB, got %d", c.ProblemsMaxBytes))
	}
	if c.ProblemsMaxPerTenant < 1 {
		errs = append(errs, fmt.Errorf("problems_max_per_tenant must be at least 1, got %d", c.ProblemsMaxPerTenant))
	}
	if c.MaxMsgSize < 64<<10 {
		errs = append(errs, fmt.Errorf("max_msg_size must be at least 64 KiB, got %d", c.MaxMsgSize))
	}
	return errors.Join(errs...)
}

// Definitions returns the configuration of every Surge stream.
//
//   - INGEST is a work queue: the partitioner's ack removes a request. It
//     holds ingest's encoded requests (ingest.<tenant>) and the JSON
//     messages of NATS and MQTT producers (surge.in.<tenant>.<anything>).
//   - EVENTS keeps per-shard runs until the batcher has cut them into a
//     published batch; the batcher then purges them (it reads with an
//     ordered consumer, so there is nothing to ack).
//   - BATCHES is a work queue: each shard's sink consumer acks a batch once
//     ClickHouse holds it.
//   - DEAD_LETTER keeps what could not be processed, for inspection and replay.
//   - PROBLEMS keeps the problems of tenants' events, aggregated by the
//     services (problems.<tenant>), for GET /v1/problems: bounded in age,
//     bytes and messages per tenant, it drops its oldest when full.
//
// All use file storage. INGEST, EVENTS and BATCHES refuse new messages
// when full, so a slow stage pushes back rather than dropping what was
// acknowledged; DEAD_LETTER and PROBLEMS drop their oldest instead.
func Definitions(c Config) []jetstream.StreamConfig {
	base := func(name, desc string, subjects []string, retention jetstream.RetentionPolicy) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    subjects,
			Retention:   retention,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			MaxBytes:    c.MaxBytes,
			MaxMsgSize:  c.MaxMsgSize,
			Discard:     jetstream.DiscardNew,
			Duplicates:  c.DuplicateWindow,
		}
	}
	dl := base(DeadLetter, "Surge messages that could not be processed", []string{"deadletter.>"}, jetstream.LimitsPolicy)
	dl.MaxAge = c.DeadLetterMaxAge
	dl.Discard = jetstream.DiscardOld
	pr := base(Problems, "Surge problems of tenants' events, aggregated", []string{ProblemsAll}, jetstream.LimitsPolicy)
	pr.MaxAge = c.ProblemsMaxAge
	pr.MaxBytes = c.ProblemsMaxBytes
	pr.MaxMsgsPerSubject = c.ProblemsMaxPerTenant
	pr.MaxMsgSize = problemsMaxMsgSize
	pr.Discard = jetstream.DiscardOld
	return []jetstream.StreamConfig{
		base(Ingest, "Surge requests as accepted by ingest and published by producers", []string{"ingest.>", ProducerPrefix + ">"}, jetstream.WorkQueuePolicy),
		base(Events, "Surge events grouped per shard", []string{"events.shard.*"}, jetstream.LimitsPolicy),
		base(Batches, "Surge columnar batches per shard", []string{"batches.shard.*"}, jetstream.WorkQueuePolicy),
		dl,
		pr,
	}
}

// problemsMaxMsgSize bounds one aggregate: its samples are bounded well
// below it.
const problemsMaxMsgSize = 64 << 10

// Ensure creates every stream or updates it to the configuration, so every
// service can call it at start in any order. The metadata a stream holds
// (the shard count, see CheckShards) is kept.
func Ensure(ctx context.Context, js jetstream.JetStream, c Config) error {
	for _, sc := range Definitions(c) {
		st, err := js.Stream(ctx, sc.Name)
		switch {
		case err == nil:
			sc.Metadata = ownMetadata(st.CachedInfo().Config.Metadata)
		case !errors.Is(err, jetstream.ErrStreamNotFound):
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("ensure stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// MetaShards is the EVENTS stream's metadata key that records the number
// of logical shards the streams' subjects are laid out for.
const MetaShards = "surge.shards"

// ErrShardsMismatch refuses a service configured with another shard count
// than the streams were laid out for: its events would go to, or be read
// from, the wrong shards.
var ErrShardsMismatch = errors.New("shard count differs from the streams'")

// CheckShards records shards in the EVENTS stream's metadata when it has
// none, and fails with ErrShardsMismatch when it records another count:
// partitioner, batcher and sink must agree, and SURGE_SHARDS set
// differently on one of them is refused at its start instead of splitting
// the shards silently. Changing the shard count of a running deployment
// means new streams (or removing the key by hand, knowing what it does).
func CheckShards(ctx context.Context, js jetstream.JetStream, shards int) error {
	want := strconv.Itoa(shards)
	// A stream update of another service starting at the same time
	// (Ensure read the metadata before this one wrote it) may write the
	// record away: record it again, a few times at most.
	const attempts = 5
	for i := 0; ; i++ {
		st, err := js.Stream(ctx, Events)
		if err != nil {
			return fmt.Errorf("stream %s: %w", Events, err)
		}
		cfg := st.CachedInfo().Config
		if got, ok := cfg.Metadata[MetaShards]; ok {
			if got != want {
				return fmt.Errorf("%w: this service has %d shards, stream %s was laid out for %s (metadata %s); set the same SURGE_SHARDS on every partitioner, batcher and sink",
					ErrShardsMismatch, shards, Events, got, MetaShards)
			}
			return nil
		}
		if i == attempts {
			return fmt.Errorf("record shard count on stream %s: written away by concurrent stream updates %d times", Events, attempts)
		}
		cfg.Metadata = ownMetadata(cfg.Metadata)
		if cfg.Metadata == nil {
			cfg.Metadata = map[string]string{}
		}
		cfg.Metadata[MetaShards] = want
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("record shard count on stream %s: %w", Events, err)
		}
		// Read back at the next round: of two services recording
		// different counts at once, one reads the other's and is
		// refused; one whose record a concurrent update wrote away
		// records it again.
	}
}

// ownMetadata is a stream's metadata without the keys the server sets
// itself (_nats.*), which a stream update must not send back.
func ownMetadata(m map[string]string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if strings.HasPrefix(k, "_nats.") {
			continue
		}
		if out == nil {
			out = make(map[string]string)
		}
		out[k] = v
	}
	return out
}
