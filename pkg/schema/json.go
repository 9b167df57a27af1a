package schema

import (
	"unicode/utf16"
	"unicode/utf8"

	"github.com/surge-events/surge/pkg/internal/jsontext"
)

// reader reads the JSON of one row's properties from s at i. It accepts
// JSON as RFC 8259 writes it and nothing else; its methods return false
// on anything else, and the row gets no fields.
type reader struct {
	s string
	i int
}

func (r *reader) peek() byte {
	if r.i < len(r.s) {
		return r.s[r.i]
	}
	return 0
}

func (r *reader) consume(c byte) bool {
	if r.peek() == c {
		r.i++
		return true
	}
	return false
}

// ws skips whitespace.
func (r *reader) ws() { r.i = jsontext.Space(r.s, r.i) }

func (r *reader) literal(lit string) bool {
	if len(r.s)-r.i >= len(lit) && r.s[r.i:r.i+len(lit)] == lit {
		r.i += len(lit)
		return true
	}
	return false
}

// str reads the string at r and returns its raw contents (without the
// quotes) and whether they hold escapes. Bytes that are not UTF-8 are
// read as they are (see appendJSONString).
func (r *reader) str() (raw string, esc, ok bool) {
	if !r.consume('"') {
		return "", false, false
	}
	start := r.i
	for {
		r.i = jsontext.PlainRun(r.s, r.i)
		if r.i >= len(r.s) {
			return "", false, false
		}
		switch c := r.s[r.i]; {
		case c == '"':
			raw = r.s[start:r.i]
			r.i++
			return raw, esc, true
		case c == '\\':
			esc = true
			if r.i+1 >= len(r.s) {
				return "", false, false
			}
			switch r.s[r.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				r.i += 2
			case 'u':
				if jsontext.Hex4(r.s, r.i+2) < 0 {
					return "", false, false
				}
				r.i += 6
			default:
				return "", false, false
			}
		case c < 0x20:
			return "", false, false
		default: // a byte of a multi-byte sequence
			r.i++
		}
	}
}

// number reads a number and says whether it is an integer's text (no
// fraction, no exponent).
func (r *reader) number() (integer, ok bool) {
	r.i, integer, ok = jsontext.Number(r.s, r.i)
	return integer, ok
}

// skip reads past the value at r, nested jd deep (the root is 1).
func (r *reader) skip(jd int) bool {
	if jd > maxJSONDepth {
		return false
	}
	switch c := r.peek(); {
	case c == '{' || c == '[':
		end := closing(c)
		r.i++
		r.ws()
		if r.consume(end) {
			return true
		}
		for {
			if c == '{' {
				if _, _, ok := r.str(); !ok {
					return false
				}
				r.ws()
				if !r.consume(':') {
					return false
				}
				r.ws()
			}
			if !r.skip(jd + 1) {
				return false
			}
			r.ws()
			if r.consume(',') {
				r.ws()
				continue
			}
			return r.consume(end)
		}
	case c == '"':
		_, _, ok := r.str()
		return ok
	case c == 't':
		return r.literal("true")
	case c == 'f':
		return r.literal("false")
	case c == 'n':
		return r.literal("null")
	}
	_, ok := r.number()
	return ok
}

// closing is the bracket that closes the object or array open opens.
func closing(open byte) byte {
	if open == '[' {
		return ']'
	}
	return '}'
}

// unescape appends the string of raw, a string's contents holding
// escapes, to dst. An escape of a lone UTF-16 surrogate is kept as its
// text (\ud800), as the JSON parser before this one did; ingest refuses
// such strings, so only an event that bypassed it can hold one.
func unescape(dst []byte, raw string) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		if i+1 >= len(raw) {
			return append(dst, c)
		}
		e := raw[i+1]
		i += 2
		switch e {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			x := jsontext.Hex4(raw, i)
			if x < 0 {
				dst = append(dst, `\u`...)
				continue
			}
			i += 4
			if !utf16.IsSurrogate(x) {
				dst = utf8.AppendRune(dst, x)
				continue
			}
			if i+6 > len(raw) || raw[i] != '\\' || raw[i+1] != 'u' {
				dst = append(dst, `\u`...)
				dst = append(dst, raw[i-4:i]...)
				continue
			}
			x1 := jsontext.Hex4(raw, i+2)
			if x1 < 0 {
				dst = append(dst, `\u`...)
				dst = append(dst, raw[i-4:i]...)
				continue
			}
			dst = utf8.AppendRune(dst, utf16.DecodeRune(x, x1))
			i += 6
		default: // " \ / and, kept as sent, any other
			if e != '"' && e != '\\' && e != '/' {
				dst = append(dst, '\\')
			}
			dst = append(dst, e)
		}
	}
	return dst
}
