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

// TestNumber reads the JSON number grammar: where a number ends, whether
// it is an integer's text, and what is not a number.
func TestNumber(t *testing.T) {
	for _, c := range []struct {
		in          string
		end         int
		integer, ok bool
	}{
		{"0", 1, true, true}, {"-0", 2, true, true}, {"123,", 3, true, true}, {"-7}", 2, true, true},
		{"1.5", 3, false, true}, {"1e3", 3, false, true}, {"1E+3]", 4, false, true}, {"2.50e-1", 7, false, true},
		{"01", 1, true, true}, // the number is 0; what follows is the caller's
		{"", 0, false, false}, {"-", 1, false, false}, {"+1", 0, false, false}, {".5", 0, false, false},
		{"1.", 2, false, false}, {"1.e3", 2, false, false}, {"1e", 2, false, false}, {"1e+", 3, false, false},
		{"NaN", 0, false, false},
	} {
		end, integer, ok := Number(c.in, 0)
		if ok != c.ok || (ok && (end != c.end || integer != c.integer)) {
			t.Errorf("Number(%q) = %d, %v, %v; want %d, %v, %v", c.in, end, integer, ok, c.end, c.integer, c.ok)
		}
		if bend, binteger, bok := Number([]byte(c.in), 0); bend != end || binteger != integer || bok != ok {
			t.Errorf("Number of bytes %q differs from Number of the string", c.in)
		}
	}
}

func TestHex4AndSpace(t *testing.T) {
	for in, want := range map[string]rune{"00e9": 0xe9, "D83D": 0xd83d, "aBcD": 0xabcd, "12g4": -1, "123": -1} {
		if got := Hex4(in, 0); got != want {
			t.Errorf("Hex4(%q) = %#x, want %#x", in, got, want)
		}
	}
	if got := Hex4("\\u00411", 2); got != 0x41 {
		t.Errorf("Hex4 at 2 = %#x", got)
	}
	if got := Space(" \t\r\n x", 0); got != 5 {
		t.Errorf("Space = %d, want 5", got)
	}
	if got := Space([]byte("  "), 1); got != 2 {
		t.Errorf("Space to the end = %d, want 2", got)
	}
}
