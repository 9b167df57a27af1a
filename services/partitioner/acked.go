package partitioner

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/streams"
)

// removeAckedTimeout bounds the whole start-up removal: a consumer info, a
// stream info and one purge.
const removeAckedTimeout = 3 * apiTimeout

// removeAcked removes the INGEST messages at or below the shared
// consumer's ack floor and says how many it removed.
//
// INGEST is a work queue: the server removes a message when its consumer
// acks it. A server killed between the ack and the removal can come back
// holding messages the consumer has already acked: its ack floor is past
// them, nothing is pending, and nothing will ever deliver them again, yet
// they count in the stream (and against its limits) for good. Every
// message at or below the ack floor is acked, and the floor only grows,
// so removing them is safe while other partitioners run. It runs once at
// start.
func (src *source) removeAcked(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, removeAckedTimeout)
	defer cancel()
	ci, err := src.consumer().Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer %s: %w", ConsumerName, err)
	}
	floor := ci.AckFloor.Stream
	st, err := src.js.Stream(ctx, streams.Ingest)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", streams.Ingest, err)
	}
	if state := st.CachedInfo().State; state.Msgs == 0 || state.FirstSeq > floor {
		return 0, nil // the usual case: every acked message is gone
	}
	return purgeBelow(ctx, src.js, streams.Ingest, floor+1)
}

// purgeBelow purges the messages of stream below seq and returns how
// many went. jetstream's Stream.Purge does not return the count, so this
// sends the purge request itself.
func purgeBelow(ctx context.Context, js jetstream.JetStream, stream string, seq uint64) (uint64, error) {
	req, err := json.Marshal(jetstream.StreamPurgeRequest{Sequence: seq})
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
