package producers

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMessage(t *testing.T) {
	got := Message([]Event{{ID: "a-0-0", UserID: "u0", Type: "click"}, {ID: "a\"1", UserID: "ü", Type: "hot"}})
	require.Equal(t, `[{"event_id":"a-0-0","user_id":"u0","type":"click"},{"event_id":"a\"1","user_id":"ü","type":"hot"}]`, string(got))
}
