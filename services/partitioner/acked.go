package partitioner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/streams"
)

// removeAckedTimeout bounds the whole start-up removal: a stream info, the
// consumer list and the purges.
const removeAckedTimeout = 3 * apiTimeout

// removeAcked removes the INGEST messages at or below the ack floor of
// each partitioner consumer (the tenants', and the shared one of older
// partitioners), among the subjects it filters, and says how many it
// removed.
//
// INGEST is a work queue: the server removes a message when its consumer
// acks it. A server killed between the ack and the removal can come back
// holding messages the consumer has already acked: its ack floor is past
// them, nothing is pending, and nothing will ever deliver them again, yet
// they count in the stream (and against its limits) for good. Every
// message of a consumer's subjects at or below its ack floor is acked,
// and the floor only grows, so removing them is safe while other
// partitioners run. It runs once at start.
func (src *source) removeAcked(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, removeAckedTimeout)
	defer cancel()
	st, err := src.js.Stream(ctx, streams.Ingest)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", streams.Ingest, err)
	}
	state := st.CachedInfo().State
	if state.Msgs == 0 {
		return 0, nil
	}
	type purge struct {
		filter string // "" is the whole stream
		below  uint64
	}
	var purges []purge
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.Name != LegacyConsumerName && !strings.HasPrefix(ci.Name, ConsumerPrefix) {
			continue
		}
		floor := ci.AckFloor.Stream
		if state.FirstSeq > floor {
			continue // the usual case: every acked message is gone
		}
		filters := ci.Config.FilterSubjects
		if ci.Config.FilterSubject != "" {
			filters = append(filters, ci.Config.FilterSubject)
		}
		if len(filters) == 0 {
			filters = []string{""}
		}
		for _, f := range filters {
			purges = append(purges, purge{filter: f, below: floor + 1})
		}
	}
	if err := lister.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return 0, fmt.Errorf("consumers of %s: %w", streams.Ingest, err)
	}
	var removed uint64
	for _, p := range purges {
		n, err := purgeBelow(ctx, src.js, streams.Ingest, p.filter, p.below)
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// purgeBelow purges the messages of stream below seq on subject filter
// (all of them when filter is empty) and returns how many went.
// jetstream's Stream.Purge does not return the count, so this sends the
// purge request itself.
func purgeBelow(ctx context.Context, js jetstream.JetStream, stream, filter string, seq uint64) (uint64, error) {
	req, err := json.Marshal(jetstream.StreamPurgeRequest{Sequence: seq, Subject: filter})
	if err != nil {
		return 0, err
	}
	msg, err := js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+stream, req)
	if err != nil {
		return 0, fmt.Errorf("purge %s below %d: %w", stream, seq, err)
	}
	var resp struct {
		Purged uint64              `json:"purged"`
		Error  *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, fmt.Errorf("purge %s below %d: %w", stream, seq, err)
	}
	if resp.Error != nil {
		return 0, fmt.Errorf("purge %s below %d: %w", stream, seq, resp.Error)
	}
	return resp.Purged, nil
}
