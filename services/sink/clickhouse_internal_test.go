package sink

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestInsertTurns: with MaxInserts 2 a server gives two turns at once; a
// third waits until one is released, and a wait whose context ends is
// errNoTurn, which sent nothing.
func TestInsertTurns(t *testing.T) {
	s, err := openServer(ClickHouseConfig{Database: "surge", Cluster: "c", MaxInserts: 2}, "127.0.0.1:1")
	require.NoError(t, err)
	defer s.Close()

	release1, err := s.turn(t.Context())
	require.NoError(t, err)
	release2, err := s.turn(t.Context())
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = s.turn(ctx)
	require.ErrorIs(t, err, errNoTurn)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "127.0.0.1:1")

	got := make(chan error, 1)
	go func() {
		release3, err := s.turn(t.Context())
		if err == nil {
			release3()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a third turn while two are taken: %v", err)
	default:
	}
	release1()
	require.NoError(t, <-got)
	release2()
	require.Empty(t, s.turns, "every turn given back")
}
