package sink

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAnswerReturnsWhatTheQueryReturns(t *testing.T) {
	n, err := answer(t.Context(), func() (uint64, error) { return 42, nil })
	require.NoError(t, err)
	require.Equal(t, uint64(42), n)

	boom := errors.New("boom")
	_, err = answer(t.Context(), func() (uint64, error) { return 0, boom })
	require.ErrorIs(t, err, boom)
}

// TestAnswerReturnsAtTheDeadline: a query whose server stopped answering
// (q blocked) ends the call at its context's deadline, with the deadline
// as the error; q goes on until the server answers, and its result is
// dropped.
func TestAnswerReturnsAtTheDeadline(t *testing.T) {
	server := make(chan struct{})
	finished := make(chan struct{})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := answer(ctx, func() (uint64, error) {
		defer close(finished)
		<-server // the server answers only when the test lets it
		return 7, nil
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "no answer from the server")
	select {
	case <-finished:
		t.Fatal("the query ended before its server answered")
	default:
	}
	close(server)
	<-finished // q's goroutine ends once the server answers
}
