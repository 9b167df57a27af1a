package event

import (
	"encoding/json"
	"strconv"
)

// Text integrity. JSON text is Unicode, yet encoding/json accepts strings
// holding bytes that are not UTF-8 and \u escapes of lone UTF-16
// surrogates: it replaces them with U+FFFD when it decodes (two different
// bad user ids would become one shard key) and keeps them as they are when
// it compacts (properties would carry text that strict JSON readers
// refuse). Surge rejects an event with such text in any key or string, at
// any depth, naming where it is. The fast path gives up on such an event
// (scanner.bad) and the general path reports it here.

const (
	// reasonInvalidText is the problem of a string that is not valid text.
	reasonInvalidText = "invalid UTF-8"
	// reasonInvalidKey is the problem of an object key that is not valid
	// text; the field names the key with U+FFFD for what is invalid.
	reasonInvalidKey = "invalid UTF-8 in key"
)

// textProblem is the first key or string of one top-level field that is
// not valid text: field is its path (properties.a.list[2]).
type textProblem struct {
	field, reason string
	key           bool // a key of the event object itself
}

// invalidText checks every key and string of the event object raw, which
// must be valid JSON. It returns, by top-level field name as encoding/json
// decodes it, the first problem in that field; nil when all text is valid.
func invalidText(raw []byte) map[string]textProblem {
	if !mayHoldInvalidText(raw) {
		return nil
	}
	w := textWalker{scanner: scanner{b: raw}}
	w.ws()
	if !w.consume('{') {
		return nil
	}
	var found map[string]textProblem
	for first := true; ; first = false {
		w.ws()
		if w.consume('}') || (!first && !w.consume(',')) {
			return found
		}
		w.ws()
		w.bad = false
		name, ok := w.key()
		if !ok {
			return found // not valid JSON: json.Unmarshal said so already
		}
		var p textProblem
		if w.bad {
			p = textProblem{field: name, reason: reasonInvalidKey, key: true}
		}
		w.ws()
		w.consume(':')
		w.path = append(w.path[:0], name...)
		if bad, inKey := w.value(); bad && !p.key {
			p = textProblem{field: string(w.path), reason: reasonInvalidText}
			if inKey {
				p.reason = reasonInvalidKey
			}
		}
		if p.reason == "" {
			continue
		}
		if found == nil {
			found = make(map[string]textProblem)
		}
		if _, dup := found[name]; !dup {
			found[name] = p
		}
	}
}

// mayHoldInvalidText is a quick look for what invalid text needs: a byte
// outside ASCII or a \u escape. Most events hold neither.
func mayHoldInvalidText(raw []byte) bool {
	for i, c := range raw {
		if c >= 0x80 || (c == '\\' && i+1 < len(raw) && raw[i+1] == 'u') {
			return true
		}
	}
	return false
}

// textWalker finds the first invalid key or string in valid JSON and
// keeps its path.
type textWalker struct {
	scanner
	path []byte
}

// key reads an object key and returns it as encoding/json decodes it
// (invalid text becomes U+FFFD); it sets w.bad when it is invalid text.
func (w *textWalker) key() (string, bool) {
	start := w.i
	raw, esc, ok := w.str()
	if !ok {
		return "", false
	}
	if !esc && !w.bad {
		return string(raw), true
	}
	var name string
	if json.Unmarshal(w.b[start:w.i], &name) != nil {
		return "", false
	}
	return name, true
}

// value walks one value and reports whether it holds invalid text, then
// with w.path naming where and inKey telling whether it is a key.
func (w *textWalker) value() (bad, inKey bool) {
	w.ws()
	switch w.peek() {
	case '{':
		w.i++
		n := len(w.path)
		for first := true; ; first = false {
			w.ws()
			if w.consume('}') || (!first && !w.consume(',')) {
				return false, false
			}
			w.ws()
			w.bad = false
			name, ok := w.key()
			if !ok {
				return false, false
			}
			w.path = append(append(w.path[:n], '.'), name...)
			if w.bad {
				return true, true
			}
			w.ws()
			w.consume(':')
			if bad, inKey := w.value(); bad {
				return true, inKey
			}
		}
	case '[':
		w.i++
		n := len(w.path)
		for i := 0; ; i++ {
			w.ws()
			if w.consume(']') || (i > 0 && !w.consume(',')) {
				return false, false
			}
			w.path = append(strconv.AppendInt(append(w.path[:n], '['), int64(i), 10), ']')
			if bad, inKey := w.value(); bad {
				return true, inKey
			}
		}
	case '"':
		w.bad = false
		if _, _, ok := w.str(); !ok {
			return false, false
		}
		return w.bad, false
	default:
		// A number or literal: no text. skipValue validates it, though
		// the JSON is known to be valid.
		w.skipValue(0, nil)
		return false, false
	}
}
