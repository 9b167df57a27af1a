package event

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// codecVersion is the first byte of every encoded event list.
const codecVersion byte = 1

// minEncodedEvent is the fewest bytes one encoded event takes: five string
// lengths and two timestamps of one byte each.
const minEncodedEvent = 7

// ErrCorrupt reports an encoded event list that cannot be decoded.
var ErrCorrupt = errors.New("corrupt event encoding")

// AppendEncoded appends the compact binary form of events to dst. The form
// is a version byte, a count, then per event length-prefixed strings and
// varint microsecond timestamps: cheaper than JSON at every hop.
func AppendEncoded(dst []byte, events []Event) []byte {
	dst = append(dst, codecVersion)
	dst = binary.AppendUvarint(dst, uint64(len(events)))
	for i := range events {
		e := &events[i]
		dst = appendString(dst, e.EventID)
		dst = appendString(dst, e.Tenant)
		dst = appendString(dst, e.UserID)
		dst = appendString(dst, e.Type)
		dst = binary.AppendVarint(dst, e.TS.UnixMicro())
		dst = binary.AppendVarint(dst, e.ReceivedAt.UnixMicro())
		dst = appendString(dst, e.Properties)
	}
	return dst
}

// Decode parses a list written by AppendEncoded.
func Decode(b []byte) ([]Event, error) {
	r := reader{b: b}
	if v := r.byte(); v != codecVersion {
		return nil, fmt.Errorf("%w: version %d", ErrCorrupt, v)
	}
	n := r.uvarint()
	// Bound the count by what the bytes can hold, so a corrupt count cannot
	// make Decode allocate far more than the message.
	if r.err != nil || n > uint64(len(r.b)/minEncodedEvent) {
		return nil, fmt.Errorf("%w: bad count", ErrCorrupt)
	}
	events := make([]Event, n)
	for i := range events {
		e := &events[i]
		e.EventID = r.string()
		e.Tenant = r.string()
		e.UserID = r.string()
		e.Type = r.string()
		e.TS = time.UnixMicro(r.varint()).UTC()
		e.ReceivedAt = time.UnixMicro(r.varint()).UTC()
		e.Properties = r.string()
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(r.b))
	}
	return events, nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated %s", ErrCorrupt, what)
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if len(r.b) == 0 {
		r.fail("header")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("length")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("timestamp")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail("string")
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
