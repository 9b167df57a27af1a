package ports

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFreeDrawsBelowTheEphemeralRange: the ports are distinct, below the
// kernel's ephemeral range, and each can be listened on.
func TestFreeDrawsBelowTheEphemeralRange(t *testing.T) {
	low, err := ephemeralLow()
	require.NoError(t, err, "this test reads the Linux ephemeral range")
	got, err := Free(50)
	require.NoError(t, err)
	require.Len(t, got, 50)
	seen := map[int]bool{}
	for _, p := range got {
		require.False(t, seen[p], "port %d twice", p)
		seen[p] = true
		require.GreaterOrEqual(t, p, lowest)
		require.Less(t, p, low)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		require.NoError(t, err, "port %d", p)
		require.NoError(t, ln.Close())
	}
}

// TestFreeSkipsATakenPort: a port someone listens on is never handed out.
func TestFreeSkipsATakenPort(t *testing.T) {
	// Hold every port of a small slice of the range, then draw many.
	var held []net.Listener
	taken := map[int]bool{}
	for p := lowest; p < lowest+200; p++ {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		held = append(held, ln)
		taken[p] = true
	}
	t.Cleanup(func() {
		for _, ln := range held {
			_ = ln.Close()
		}
	})
	require.NotEmpty(t, taken)
	got, err := Free(2000)
	require.NoError(t, err)
	for _, p := range got {
		require.False(t, taken[p], "port %d is listened on", p)
	}
}

func TestFromKernel(t *testing.T) {
	got, err := fromKernel(3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.NotEqual(t, got[0], got[1])
	require.NotEqual(t, got[1], got[2])
}

// TestFreeNeverHandsAPortOutTwice: ports handed out and not bound yet
// look free, yet a later call in the process does not return them.
func TestFreeNeverHandsAPortOutTwice(t *testing.T) {
	seen := map[int]bool{}
	for range 100 {
		got, err := Free(30)
		require.NoError(t, err)
		for _, p := range got {
			require.False(t, seen[p], "port %d handed out twice", p)
			seen[p] = true
		}
	}
}
