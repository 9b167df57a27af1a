// Package shard maps an event's key onto one of N logical shards.
//
// The key is tenant and user id; it is hashed with xxhash64 and placed with
// Lamping and Veach's jump consistent hash, so growing N from n to n+1 moves
// only 1/(n+1) of the keys, unlike the modulo the seed document starts from.
package shard

import "github.com/cespare/xxhash/v2"

// Key hashes the shard key of an event.
func Key(tenant, userID string) uint64 {
	d := xxhash.New()
	_, _ = d.WriteString(tenant)
	_, _ = d.Write([]byte{0})
	_, _ = d.WriteString(userID)
	return d.Sum64()
}

// Jump is the jump consistent hash of key onto n buckets; n must be >= 1.
func Jump(key uint64, n int) int {
	var b, j int64 = -1, 0
	for j < int64(n) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int(b)
}

// Of returns the shard, in [0, n), of the event keyed by tenant and userID.
func Of(tenant, userID string, n int) int {
	return Jump(Key(tenant, userID), n)
}
