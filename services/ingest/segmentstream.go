package ingest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/surge-events/surge/pkg/event"
)

// excerptBytes is how much of a message too large to store its dead letter
// keeps: DEAD_LETTER bounds a message's size, and the headers name the
// message and its size.
const excerptBytes = 4 << 10

// batchLimits bound what readSegmentBatch keeps of a batch.
type batchLimits struct {
	// messages is the most messages a batch may hold (max_events).
	messages int
	// messageBytes is the largest message, as sent, kept whole
	// (max_event_bytes); a larger one is kept as an excerpt, refused.
	messageBytes int
	// keptBytes bounds the messages kept whole, together (max_body_bytes).
	keptBytes int64
}

// batchLimits are the service's.
func (s *Service) batchLimits() batchLimits {
	in := s.cfg.Ingest
	return batchLimits{messages: in.MaxEvents, messageBytes: in.MaxEventBytes, keptBytes: in.MaxBodyBytes}
}

// segmentBatch is a batch body as readSegmentBatch read it.
type segmentBatch struct {
	// req holds the batch's shared fields, and in Batch every message in
	// order: a message too large holds its first excerptBytes.
	req segmentRequest
	// tooLarge is, by index, each message over batchLimits.messageBytes:
	// its messageId and its problem.
	tooLarge map[int]segmentMessage
	// size is the bytes of the whole body (after decompression), which
	// the quota charges: the body readBody held is its first part only.
	size int64
}

// readSegmentBatch reads a batch body as a stream, one message at a time,
// so a body grown past max_body_bytes by a few huge messages still stores
// the others: a huge message is held only while it is measured, then only
// its excerpt and messageId are kept. It refuses the body (reply) when it
// is not a JSON object whose batch, if any, is an array of JSON values
// (400), holds more than limits.messages messages or more than
// limits.keptBytes of messages within limits.messageBytes (413), or
// cannot be read (a *bodyError's reply). Nothing is stored before the
// whole body is read, so a refused body stores nothing.
func readSegmentBatch(body io.Reader, limits batchLimits) (segmentBatch, reply) {
	var b segmentBatch
	dec := json.NewDecoder(body)
	if tok, err := dec.Token(); err != nil {
		return b, malformedBatch(err)
	} else if tok != json.Delim('{') {
		return b, malformedBatch(errors.New("not an object"))
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return b, malformedBatch(err)
		}
		key, _ := tok.(string) // the decoder reads only strings as keys
		// json.Unmarshal's rules: keys match case-insensitively; the last
		// of a repeated key wins.
		switch {
		case strings.EqualFold(key, "batch"):
			if rep := b.readMessages(dec, limits); rep.status != 0 {
				return b, rep
			}
			continue
		case strings.EqualFold(key, "context"):
			err = dec.Decode(&b.req.Context)
		case strings.EqualFold(key, "integrations"):
			err = dec.Decode(&b.req.Integrations)
		case strings.EqualFold(key, "sentAt"):
			err = dec.Decode(&b.req.SentAt)
		case strings.EqualFold(key, "writeKey"):
			err = dec.Decode(&b.req.WriteKey)
		default:
			var skipped json.RawMessage
			err = dec.Decode(&skipped)
		}
		if err != nil {
			return b, malformedBatch(err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return b, malformedBatch(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("more after the object")
		}
		return b, malformedBatch(err)
	}
	b.size = dec.InputOffset()
	return b, reply{}
}

// readMessages reads the value of the body's batch key into b.
func (b *segmentBatch) readMessages(dec *json.Decoder, limits batchLimits) reply {
	tok, err := dec.Token()
	switch {
	case err != nil:
		return malformedBatch(err)
	case tok == nil: // null: no batch
		b.req.Batch, b.tooLarge = nil, nil
		return reply{}
	case tok != json.Delim('['):
		return reject(http.StatusBadRequest, reasonBadRequest, "batch must be a JSON array of messages")
	}
	b.req.Batch, b.tooLarge = []json.RawMessage{}, nil
	var kept int64
	for dec.More() {
		i := len(b.req.Batch)
		if i == limits.messages {
			return reject(http.StatusRequestEntityTooLarge, reasonTooManyEvents,
				fmt.Sprintf("%s: limit is %d", event.ErrTooManyEvents, limits.messages))
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return malformedBatch(err)
		}
		if len(raw) > limits.messageBytes {
			if b.tooLarge == nil {
				b.tooLarge = map[int]segmentMessage{}
			}
			b.tooLarge[i] = tooLargeMessage(raw, i, limits.messageBytes)
			raw = excerpt(raw)
		} else if kept += int64(len(raw)); kept > limits.keptBytes {
			return reject(http.StatusRequestEntityTooLarge, reasonBodyTooLarge,
				fmt.Sprintf("the batch's messages of at most %d bytes take more than %d bytes together; send fewer", limits.messageBytes, limits.keptBytes))
		}
		b.req.Batch = append(b.req.Batch, raw)
	}
	if _, err := dec.Token(); err != nil { // the closing bracket
		return malformedBatch(err)
	}
	return reply{}
}

// tooLargeMessage is message i, of raw's size, refused as too large.
func tooLargeMessage(raw json.RawMessage, i, limit int) segmentMessage {
	var head struct {
		MessageID json.RawMessage `json:"messageId"`
	}
	_ = json.Unmarshal(raw, &head) // a message that is no object has none
	var m segmentMessage
	m.MessageID, _ = text(head.MessageID)
	name := fmt.Sprintf("message %d", i)
	if m.MessageID != "" {
		name = fmt.Sprintf("messageId %q", excerpt([]byte(m.MessageID)))
	}
	m.Problems = []event.Problem{{Index: i, Reason: fmt.Sprintf(
		"message_too_large: %s is %d bytes, more than max_event_bytes %d (dead letter: its first %d bytes)", name, len(raw), limit, excerptBytes)}}
	return m
}

// excerpt is raw's first excerptBytes, cut on a character boundary.
func excerpt(raw []byte) []byte {
	if len(raw) <= excerptBytes {
		return raw
	}
	cut := excerptBytes
	for cut > 0 && !utf8.RuneStart(raw[cut]) {
		cut--
	}
	return append([]byte(nil), raw[:cut]...) // not holding the rest
}

// malformedBatch is the answer to a body that is no JSON batch, or to a
// failure to read it.
func malformedBatch(err error) reply {
	var read *bodyError
	if errors.As(err, &read) {
		return read.rep
	}
	if err == io.EOF { // the decoder's word for a body cut short between tokens
		err = io.ErrUnexpectedEOF
	}
	return reject(http.StatusBadRequest, reasonBadRequest, "body must be a JSON object with batch, if any, an array: "+err.Error())
}
