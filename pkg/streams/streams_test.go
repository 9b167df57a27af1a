package streams_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestEnsureIsIdempotentAndUpdates(t *testing.T) {
	s := natstest.Start(t)
	nc, err := nats.Connect(s.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	cfg := streams.DefaultConfig()
	require.NoError(t, streams.Ensure(ctx, js, cfg))
	require.NoError(t, streams.Ensure(ctx, js, cfg), "a second start changes nothing")

	cfg.MaxBytes = 1 << 30
	require.NoError(t, streams.Ensure(ctx, js, cfg))
	for _, want := range streams.Definitions(cfg) {
		st, err := js.Stream(ctx, want.Name)
		require.NoError(t, err)
		info, err := st.Info(ctx)
		require.NoError(t, err)
		got := info.Config
		require.Equal(t, want.Subjects, got.Subjects, want.Name)
		require.Equal(t, want.Retention, got.Retention, want.Name)
		require.Equal(t, jetstream.FileStorage, got.Storage, want.Name)
		require.Equal(t, want.Discard, got.Discard, want.Name)
		require.Equal(t, want.MaxBytes, got.MaxBytes, want.Name)
		require.Equal(t, want.MaxMsgSize, got.MaxMsgSize, want.Name)
		require.Equal(t, want.MaxAge, got.MaxAge, want.Name)
		if want.Name == streams.Problems {
			// PROBLEMS has bounds of its own, in size, age and per tenant.
			require.Equal(t, cfg.ProblemsMaxBytes, got.MaxBytes)
			require.Equal(t, cfg.ProblemsMaxAge, got.MaxAge)
			require.Equal(t, cfg.ProblemsMaxPerTenant, got.MaxMsgsPerSubject)
			require.Equal(t, jetstream.DiscardOld, got.Discard)
			continue
		}
		require.Equal(t, int64(1<<30), got.MaxBytes, "%s picked up the new limit", want.Name)
		require.Equal(t, cfg.MaxMsgSize, got.MaxMsgSize, want.Name)
	}
}

func TestDefinitionsNameEveryStream(t *testing.T) {
	var names []string
	for _, sc := range streams.Definitions(streams.DefaultConfig()) {
		names = append(names, sc.Name)
	}
	require.Equal(t, []string{streams.Ingest, streams.Events, streams.Batches, streams.DeadLetter, streams.Problems}, names)
}

func TestSubjects(t *testing.T) {
	require.Equal(t, "ingest.acme", streams.IngestSubject("acme"))
	require.Equal(t, "events.shard.7", streams.EventsSubject(7))
	require.Equal(t, "batches.shard.0", streams.BatchesSubject(0))
	require.Equal(t, "deadletter.sink.shard.3", streams.DeadLetterSubject("sink", 3))
	require.Equal(t, "problems.acme", streams.ProblemsSubject("acme"))
}

func TestValidateReportsEveryProblem(t *testing.T) {
	err := streams.Config{Replicas: 0, MaxBytes: 1, DuplicateWindow: 0, DeadLetterMaxAge: 0, MaxMsgSize: 1}.Validate()
	require.Error(t, err)
	for _, want := range []string{"replicas", "max_bytes", "duplicate_window", "dead_letter_max_age", "max_msg_size",
		"problems_max_age", "problems_max_bytes", "problems_max_per_tenant"} {
		require.Contains(t, err.Error(), want)
	}
	require.NoError(t, streams.DefaultConfig().Validate())
}

func TestCheckShardsRecordsTheCountAndRefusesAnother(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, streams.Ensure(ctx, js, streams.DefaultConfig()))

	require.NoError(t, streams.CheckShards(ctx, js, 8), "the first service records its count")
	require.NoError(t, streams.CheckShards(ctx, js, 8), "the same count passes")
	// A service that ensures the streams again (ingest, which has no shard
	// count, or any service after a reconnect) keeps the record.
	require.NoError(t, streams.Ensure(ctx, js, streams.DefaultConfig()))
	st, err := js.Stream(ctx, streams.Events)
	require.NoError(t, err)
	require.Equal(t, "8", st.CachedInfo().Config.Metadata[streams.MetaShards])

	err = streams.CheckShards(ctx, js, 4)
	require.ErrorIs(t, err, streams.ErrShardsMismatch)
	require.EqualError(t, err, "shard count differs from the streams': this service has 4 shards, stream EVENTS was laid out for 8 (metadata surge.shards); set the same SURGE_SHARDS on every partitioner, batcher and sink")
}

// clobberOnce is a JetStream whose first stream update is followed by
// another service's update made from a read taken before it: an Ensure of
// a service starting at the same time, which writes the record away.
type clobberOnce struct {
	jetstream.JetStream
	stale jetstream.StreamConfig
	done  bool
}

func (c *clobberOnce) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := c.JetStream.UpdateStream(ctx, cfg)
	if err == nil && !c.done {
		c.done = true
		_, err = c.JetStream.UpdateStream(ctx, c.stale)
	}
	return st, err
}

func TestCheckShardsRecordsAgainWhatAConcurrentUpdateWroteAway(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, streams.Ensure(ctx, js, streams.DefaultConfig()))
	st, err := js.Stream(ctx, streams.Events)
	require.NoError(t, err)
	c := &clobberOnce{JetStream: js, stale: st.CachedInfo().Config}

	require.NoError(t, streams.CheckShards(ctx, c, 8))
	require.True(t, c.done)
	st, err = js.Stream(ctx, streams.Events)
	require.NoError(t, err)
	require.Equal(t, "8", st.CachedInfo().Config.Metadata[streams.MetaShards])
}
