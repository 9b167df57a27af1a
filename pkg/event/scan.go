package event

import (
	"bytes"
	"encoding/json"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/surge-events/surge/pkg/internal/jsontext"
)

// scanner reads JSON from b at i. Its methods return false on anything
// they do not accept, leaving the answer to the general path.
type scanner struct {
	b []byte
	i int
	// bad is set, and stays set, once a string read holds text that is
	// not valid Unicode (see str). The string is still read to its end, so
	// the general path can go on and name every field that holds one.
	bad bool
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) consume(c byte) bool {
	if s.peek() == c {
		s.i++
		return true
	}
	return false
}

// ws skips JSON whitespace and reports whether there was any.
func (s *scanner) ws() bool {
	start := s.i
	s.i = jsontext.Space(s.b, s.i)
	return s.i > start
}

func (s *scanner) literal(lit string) bool {
	if bytes.HasPrefix(s.b[s.i:], []byte(lit)) {
		s.i += len(lit)
		return true
	}
	return false
}

// str reads a string and returns its raw contents (without quotes) and
// whether it holds escapes. It sets s.bad when the text is not valid
// Unicode: bytes that are not UTF-8 (a stray byte, a cut sequence, an
// encoded UTF-16 surrogate such as ED A0 80) or a \u escape of a lone
// surrogate (a high one not followed by a low one, or a low one alone).
// encoding/json would replace either with U+FFFD when decoding and keep it
// as it is when compacting; Surge rejects both.
func (s *scanner) str() (raw []byte, esc bool, ok bool) {
	if !s.consume('"') {
		return nil, false, false
	}
	start := s.i
	ascii := true
	for {
		s.i = jsontext.PlainRun(s.b, s.i)
		if s.i >= len(s.b) {
			return nil, false, false
		}
		switch c := s.b[s.i]; {
		case c == '"':
			raw = s.b[start:s.i]
			s.i++
			if !ascii && !utf8.Valid(raw) {
				s.bad = true
			}
			return raw, esc, true
		case c == '\\':
			esc = true
			if s.i+1 >= len(s.b) {
				return nil, false, false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				r := jsontext.Hex4(s.b, s.i+2)
				if r < 0 {
					return nil, false, false
				}
				s.i += 6
				if utf16.IsSurrogate(r) {
					// Only a high surrogate escape followed at once by a
					// low one is text: the pair encodes one character.
					if r < 0xdc00 && s.lowSurrogate() {
						s.i += 6
					} else {
						s.bad = true
					}
				}
			default:
				return nil, false, false
			}
		case c < 0x20:
			return nil, false, false
		default: // a byte of a multi-byte sequence, checked at the end
			ascii = false
			s.i++
		}
	}
}

// lowSurrogate reports whether a \u escape of a low surrogate is at i.
func (s *scanner) lowSurrogate() bool {
	if s.i+1 >= len(s.b) || s.b[s.i] != '\\' || s.b[s.i+1] != 'u' {
		return false
	}
	r := jsontext.Hex4(s.b, s.i+2)
	return r >= 0xdc00 && r <= 0xdfff
}

// text reads a string value and returns it decoded; false when it is not
// a well-formed string of valid text.
func (s *scanner) text() (string, bool) {
	start := s.i
	raw, esc, ok := s.str()
	if !ok || s.bad {
		return "", false
	}
	if !esc {
		return string(raw), true
	}
	var v string
	if json.Unmarshal(s.b[start:s.i], &v) != nil {
		return "", false
	}
	return v, true
}

// integer reads an integer that fits int64 comfortably (at most 18
// digits, canonical form) and returns its text.
func (s *scanner) integer() (string, bool) {
	start := s.i
	s.consume('-')
	digits := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	n := s.i - digits
	if n == 0 || n > 18 || (n > 1 && s.b[digits] == '0') {
		return "", false
	}
	switch s.peek() {
	case '.', 'e', 'E':
		return "", false
	}
	v := string(s.b[start:s.i])
	if v == "-0" {
		return "", false
	}
	return v, true
}

// skipValue moves past one JSON value, validating it; spaced is set when
// it holds insignificant whitespace.
func (s *scanner) skipValue(depth int, spaced *bool) bool {
	if depth > maxFastDepth {
		return false
	}
	switch c := s.peek(); {
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		s.i++
		s.space(spaced)
		if s.consume(end) {
			return true
		}
		for {
			if c == '{' {
				if _, _, ok := s.str(); !ok {
					return false
				}
				s.space(spaced)
				if !s.consume(':') {
					return false
				}
				s.space(spaced)
			}
			if !s.skipValue(depth+1, spaced) {
				return false
			}
			s.space(spaced)
			if s.consume(',') {
				s.space(spaced)
				continue
			}
			return s.consume(end)
		}
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	default:
		return false
	}
}

func (s *scanner) space(spaced *bool) {
	if s.ws() && spaced != nil {
		*spaced = true
	}
}

// number moves past a JSON number.
func (s *scanner) number() bool {
	end, _, ok := jsontext.Number(s.b, s.i)
	s.i = end
	return ok
}
