package streams

import (
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Dedup is the stream of the batchers' deduplication records: per shard
// (dedup.shard.<k>), one message per published batch listing the keys of
// its events with a client id. A shard's owner rebuilds its set of seen
// ids from them when it starts, so the set survives restarts and lease
// moves. It is not among Definitions: only the batcher, which knows the
// dedup window, creates it (EnsureDedup).
const Dedup = "DEDUP"

// DedupKeySize is the bytes of one key in a dedup record: 128 bits of
// SHA-256 of tenant, NUL, event id. 64 bits would give a real chance of a
// collision, which would drop a distinct event, at billions of ids.
const DedupKeySize = 16

// DedupSubject is the subject of one shard's dedup records.
func DedupSubject(shard int) string { return "dedup.shard." + strconv.Itoa(shard) }

// DedupDefinition is the configuration of DEDUP: kept for window (a record
// older than the window says nothing any more), bounded by maxBytes, its
// oldest records dropped when full. Losing a record only lets duplicates
// through, so DEDUP drops rather than refuses.
func DedupDefinition(c Config, window time.Duration, maxBytes int64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        Dedup,
		Description: "Surge keys of the client event ids of every published batch, per shard, for deduplication",
		Subjects:    []string{"dedup.shard.*"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    c.Replicas,
		MaxAge:      window,
		MaxBytes:    maxBytes,
		MaxMsgSize:  c.MaxMsgSize,
		Discard:     jetstream.DiscardOld,
		// A retried record (same batch id) is stored once.
		Duplicates: min(c.DuplicateWindow, window),
	}
}

// DedupMsg is the dedup record of one published batch: the concatenated
// keys of its events with a client id, the batch id as Nats-Msg-Id and
// HeaderBatchID.
func DedupMsg(shard int, batchID string, keys []byte) *nats.Msg {
	msg := nats.NewMsg(DedupSubject(shard))
	msg.Data = keys
	msg.Header.Set(jetstream.MsgIDHeader, batchID)
	msg.Header.Set(HeaderBatchID, batchID)
	return msg
}
