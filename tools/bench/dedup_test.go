package bench

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStampedIDsAreUniquePerRequest checks that --dedup's bodies are valid
// JSON and never repeat an event_id, even when a body is reused.
func TestStampedIDsAreUniquePerRequest(t *testing.T) {
	gen := newGenerator(100, 5, "", 320)
	gen.stampIDs()
	seen := map[string]bool{}
	for range 3 * len(gen.bodies) {
		var events []struct {
			EventID string `json:"event_id"`
			UserID  string `json:"user_id"`
		}
		require.NoError(t, json.Unmarshal(gen.body(), &events))
		require.Len(t, events, 5)
		for _, e := range events {
			require.NotEmpty(t, e.UserID)
			require.False(t, seen[e.EventID], "id %s repeated", e.EventID)
			seen[e.EventID] = true
		}
	}
}
