package event

import (
	"encoding/binary"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/oklog/ulid/v2"
)

// DerivedID is a ULID made only from its inputs: the millisecond of t and
// a hash of seq and index. A message redelivered from a stream (same
// timestamp, sequence and positions) yields the same ids every time.
func DerivedID(t time.Time, seq uint64, index int) string {
	var key [16]byte
	binary.BigEndian.PutUint64(key[:8], seq)
	binary.BigEndian.PutUint64(key[8:], uint64(index))
	var entropy [16]byte
	binary.BigEndian.PutUint64(entropy[:8], xxhash.Sum64(key[:]))
	binary.BigEndian.PutUint64(entropy[8:], xxhash.Sum64(append(key[:], 0x5a)))
	var id ulid.ULID
	_ = id.SetTime(ulid.Timestamp(t)) // fails only past the year 10889
	copy(id[6:], entropy[:10])
	return id.String()
}
