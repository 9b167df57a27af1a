package shard

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRunning(t *testing.T) {
	var r Running[*int]
	require.Empty(t, r.All())
	a, b, c := new(int), new(int), new(int)
	r.Add(3, a)
	r.Add(1, b)
	require.Equal(t, []*int{b, a}, r.All(), "by shard")
	r.Add(3, c) // shard 3 started again before the old loop was removed
	r.Remove(3, a)
	require.Equal(t, []*int{b, c}, r.All(), "a newer loop of the shard stays")
	r.Remove(3, c)
	r.Remove(1, b)
	require.Empty(t, r.All())
}
