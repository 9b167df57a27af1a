// Package jsontext holds the lexing that Surge's two JSON readers share:
// ingest's parser (pkg/event), which validates what clients send, and
// the projection's reader (pkg/schema), which reads what ingest passed on.
// What they make of strings differs (ingest refuses text that is not
// valid Unicode, the projection keeps it as sent); numbers, escapes'
// digits, whitespace and the scan over a string's plain bytes do not.
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

// Space returns the index of the first byte at or after i that is not
// JSON whitespace; len(b) when there is none.
func Space[S ~string | ~[]byte](b S, i int) int {
	for ; i < len(b); i++ {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return i
		}
	}
	return i
}

// Hex4 returns the value of the four hex digits at b[i:], or -1.
func Hex4[S ~string | ~[]byte](b S, i int) rune {
	if i+4 > len(b) {
		return -1
	}
	var r rune
	for j := i; j < i+4; j++ {
		h := b[j]
		switch {
		case h >= '0' && h <= '9':
			h -= '0'
		case h >= 'a' && h <= 'f':
			h -= 'a' - 10
		case h >= 'A' && h <= 'F':
			h -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(h)
	}
	return r
}

// Number reads the JSON number at b[i:],
// -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, and returns where it
// ends and whether it is an integer's text (no fraction, no exponent);
// ok is false when b[i:] does not start with one.
func Number[S ~string | ~[]byte](b S, i int) (end int, integer, ok bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return i, false, false
	}
	integer = true
	if i < len(b) && b[i] == '.' {
		if i++; i == len(b) || b[i] < '0' || b[i] > '9' {
			return i, false, false
		}
		i, integer = digits(b, i), false
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i == len(b) || b[i] < '0' || b[i] > '9' {
			return i, false, false
		}
		i, integer = digits(b, i), false
	}
	return i, integer, true
}

func digits[S ~string | ~[]byte](b S, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}
