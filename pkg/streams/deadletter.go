package streams

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxReasonLen bounds the Surge-Reason and Surge-Problems headers of a
// dead letter, in bytes.
const MaxReasonLen = 1024

// DeadLetterMsg is something a Surge hop could not process, on its way to
// DEAD_LETTER. Every hop builds its dead letters with it, so they carry
// the same headers, the same reason rules and the same kind of id.
type DeadLetterMsg struct {
	// Service is the hop that gives up: "partitioner", "batcher", "sink".
	Service string
	// Subject is where it goes: DeadLetterSubject or InvalidSubject.
	Subject string
	// Data is the original bytes (or, for one invalid event, the event as sent).
	Data []byte
	// Reason says what is wrong.
	Reason string
	// Source and SourceSeq are the subject and stream sequence it came from.
	Source    string
	SourceSeq uint64
	// Index, when HasIndex, is the position of one event within its source
	// message, dead-lettered on its own.
	Index    int
	HasIndex bool
	// BatchID, Tenant and Problems (a JSON list) are set where they apply.
	BatchID  string
	Tenant   string
	Problems string
}

// MsgID is the dead letter's Nats-Msg-Id,
// <service>:<source>:<source seq>[:<index>]: a redelivered source message
// makes the same dead letter again, which DEAD_LETTER drops as a duplicate.
func (d DeadLetterMsg) MsgID() string {
	id := d.Service + ":" + d.Source + ":" + strconv.FormatUint(d.SourceSeq, 10)
	if d.HasIndex {
		id += ":" + strconv.Itoa(d.Index)
	}
	return id
}

// Msg is the message to publish. Header values are made safe with
// HeaderValue: a reason may quote what a producer sent.
func (d DeadLetterMsg) Msg() *nats.Msg {
	m := nats.NewMsg(d.Subject)
	m.Data = d.Data
	m.Header.Set(jetstream.MsgIDHeader, d.MsgID())
	m.Header.Set(HeaderReason, HeaderValue(d.Reason))
	m.Header.Set(HeaderSource, d.Source)
	m.Header.Set(HeaderSourceSeq, strconv.FormatUint(d.SourceSeq, 10))
	if d.HasIndex {
		m.Header.Set(HeaderSourceIndex, strconv.Itoa(d.Index))
	}
	if d.BatchID != "" {
		m.Header.Set(HeaderBatchID, d.BatchID)
	}
	if d.Tenant != "" {
		m.Header.Set(HeaderTenant, d.Tenant)
	}
	if d.Problems != "" {
		m.Header.Set(HeaderProblems, HeaderValue(d.Problems))
	}
	return m
}

// HeaderValue keeps s on one line (control characters become spaces) and
// within MaxReasonLen bytes, cut on a character boundary.
func HeaderValue(s string) string {
	if len(s) > MaxReasonLen {
		cut := MaxReasonLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}
