package jsontext

import (
	"bytes"
	"testing"
)

// TestPlainRunFindsEveryStop holds the eight-bytes-at-a-time scan to a
// byte loop: every byte value at every position of a run, on plain
// ASCII, and two stops in one word, where the subtractions' borrows could
// mark the wrong byte.
func TestPlainRunFindsEveryStop(t *testing.T) {
	naive := func(b []byte, i int) int {
		for ; i < len(b); i++ {
			if c := b[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
				return i
			}
		}
		return i
	}
	plain := bytes.Repeat([]byte("abcdefgh"), 4)
	for n := range len(plain) + 1 {
		if got := PlainRun(plain[:n], 0); got != n {
			t.Fatalf("plain run of %d bytes stops at %d", n, got)
		}
	}
	for c := range 256 {
		for pos := range 20 {
			for start := range 3 {
				b := bytes.Clone(plain[:24])
				b[pos] = byte(c)
				if got, want := PlainRun(b, start), naive(b, start); got != want {
					t.Fatalf("byte %#x at %d from %d: stops at %d, want %d", c, pos, start, got, want)
				}
				if got, want := PlainRun(string(b), start), naive(b, start); got != want {
					t.Fatalf("string: byte %#x at %d from %d: stops at %d, want %d", c, pos, start, got, want)
				}
				b[pos+1] = 0x00 // a second stop right after the first
				if got, want := PlainRun(b, start), naive(b, start); got != want {
					t.Fatalf("byte %#x at %d then NUL: stops at %d, want %d", c, pos, got, want)
				}
			}
		}
	}
}
