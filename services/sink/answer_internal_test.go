package sink

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
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

// Only a commit ZooKeeper refused with a definite answer landed nothing
// for sure; a lost answer (319) or another ZooKeeper failure may have.
func TestRefusedAtCommit(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("send to a: %w; next attempt on replica b", refusedByAlter), true},
		{&clickhouse.Exception{Code: 319, Message: "Unrecoverable network error while adding block 3 with ID '1_2'"}, false},
		{&clickhouse.Exception{Code: 244, Message: "Unexpected ZooKeeper error: connection loss"}, false},
		{errBroken, false},
	} {
		require.Equal(t, tc.want, refusedAtCommit(tc.err), "%v", tc.err)
	}
}
