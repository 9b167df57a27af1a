// Package jsontext holds what Surge's JSON readers share: the scan over
// the plain bytes of a string.
package jsontext

// PlainRun returns the index of the first byte at or after i that a JSON
// string's contents cannot hold as it is (the quote, the backslash, a
// control character) or that starts or continues a multi-byte sequence;
// len(b) when there is none. It looks at eight bytes at a time while none
// of them is such a byte: strings are most of the bytes of events, and a
// loop over single bytes read them at about 150 MB/s.
func PlainRun[S ~string | ~[]byte](b S, i int) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for ; i+8 <= len(b); i += 8 {
		_ = b[i+7]
		x := uint64(b[i]) | uint64(b[i+1])<<8 | uint64(b[i+2])<<16 | uint64(b[i+3])<<24 |
			uint64(b[i+4])<<32 | uint64(b[i+5])<<40 | uint64(b[i+6])<<48 | uint64(b[i+7])<<56
		quote := x ^ ('"' * ones)
		backslash := x ^ ('\\' * ones)
		// A byte's high bit in each term: the byte is zero (so a quote or
		// a backslash), below 0x20, or 0x80 and above. The borrows of the
		// subtractions can mark a byte past a real one, never without one.
		special := (quote-ones)&^quote | (backslash-ones)&^backslash | (x-0x20*ones)&^x | x
		if special&highs != 0 {
			break
		}
	}
	for ; i < len(b); i++ {
		if c := b[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
			return i
		}
	}
	return i
}
