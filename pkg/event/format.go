package event

import (
	"bytes"
	"encoding/json"
)

// Format is the body encoding of a request.
type Format int

const (
	// FormatJSON is a JSON array of event objects (a single object is accepted too).
	FormatJSON Format = iota
	// FormatNDJSON is one event object per line.
	FormatNDJSON
)

// DetectFormat tells how a message without a content type holds its
// events: a JSON array, one JSON object, or NDJSON (an object per line).
// It returns false when the first non-space byte is neither '[' nor '{':
// the message is not JSON at all.
func DetectFormat(data []byte) (Format, bool) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return 0, false
	}
	switch data[0] {
	case '[':
		return FormatJSON, true
	case '{':
		// One object, even pretty-printed over many lines, is valid JSON
		// as a whole; several objects are not, so they are NDJSON.
		if json.Valid(data) {
			return FormatJSON, true
		}
		return FormatNDJSON, true
	}
	return 0, false
}
