package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/tools/stack"
)

// suppressedUser is the i-th user --suppressed erases: none of the load's
// users (user-N), so every event is checked against the list and none is
// dropped.
func suppressedUser(i int) string { return fmt.Sprintf("erased-%05d", i) }

// suppressUsers puts n users of the default tenant on the stack's
// suppression list (SURGE_ERASURE) without an erasure request, so no
// mutation runs during the bench, and waits until ingest refuses the last
// one's events.
func suppressUsers(ctx context.Context, st *stack.Stack, n int) error {
	js, closeNATS, err := stackJetStream(st)
	if err != nil {
		return err
	}
	defer closeNATS()
	store, err := erasure.Open(ctx, js, 1)
	if err != nil {
		return err
	}
	users := make([]string, n)
	for i := range users {
		users[i] = suppressedUser(i)
	}
	if err := store.Suppress(ctx, &erasure.Request{ID: "bench", Tenant: "default", Users: users}); err != nil {
		return err
	}
	probe := fmt.Sprintf(`{"type":"suppression-probe","user_id":%q}`, suppressedUser(n-1))
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, st.IngestURL+"/v1/events", strings.NewReader(probe))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		var body struct {
			Accepted int `json:"accepted"`
		}
		derr := json.NewDecoder(resp.Body).Decode(&body)
		_ = resp.Body.Close()
		if derr == nil && resp.StatusCode == http.StatusAccepted && body.Accepted == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ingest did not refuse a suppressed user within 30 s (answer %s, accepted %d)", resp.Status, body.Accepted)
		}
		time.Sleep(20 * time.Millisecond) // polling ingest's answers: it offers no wait
	}
}
