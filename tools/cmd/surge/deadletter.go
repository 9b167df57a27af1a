package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
)

const deadLetterUsage = `Usage: surge deadletter [flags] <list | show SEQ | replay SEQ... | replay --all>

  list        one line per dead letter: sequence, time, subject, source (the
              service, its shard or tenant, and the message it came from),
              batch, reason
  show SEQ    every header of a dead letter and what its body holds: a
              batch's first rows, events, or the item as sent with its
              messageId or event_id
  replay SEQ  put dead letters back into the subject they came from, marked
              Surge-Replay, then delete them from DEAD_LETTER. The sink
              inserts a replayed batch's rows that ClickHouse lacks, even
              below the shard's watermark; replaying twice inserts nothing
              twice. Replay once the cause (schema, bad data, bug) is fixed:
              a batch that fails again is dead-lettered again.

Flags:
`

// deadLetter is `surge deadletter`.
func deadLetter(args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return runDeadLetter(ctx, args, os.Stdout)
}

func runDeadLetter(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("deadletter", flag.ContinueOnError)
	fs.SetOutput(out)
	conn := addNATSFlags(fs)
	all := fs.Bool("all", false, "replay every dead letter")
	fs.Usage = func() {
		fmt.Fprint(out, deadLetterUsage)
		fs.PrintDefaults()
	}
	// Flags may come before, between or after the arguments: `replay --all`.
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		fs.Usage()
		return errors.New("give a command: list, show or replay")
	}
	nc, js, err := conn.connect("surge-deadletter")
	if err != nil {
		return err
	}
	defer nc.Close()
	dl, err := js.Stream(ctx, streams.DeadLetter)
	if err != nil {
		return fmt.Errorf("stream %s: %w", streams.DeadLetter, err)
	}

	seqs := func(from []string) ([]uint64, error) {
		var out []uint64
		for _, a := range from {
			n, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("not a dead-letter sequence: %q", a)
			}
			out = append(out, n)
		}
		return out, nil
	}
	switch rest[0] {
	case "list":
		msgs, err := listDeadLetters(ctx, dl)
		if err != nil {
			return err
		}
		printDeadLetters(out, msgs)
		return nil
	case "show":
		if len(rest) != 2 {
			return errors.New("usage: surge deadletter show SEQ")
		}
		ns, err := seqs(rest[1:])
		if err != nil {
			return err
		}
		m, err := dl.GetMsg(ctx, ns[0])
		if err != nil {
			return fmt.Errorf("dead letter %d: %w", ns[0], err)
		}
		showDeadLetter(out, m)
		return nil
	case "replay":
		var targets []uint64
		if *all {
			msgs, err := listDeadLetters(ctx, dl)
			if err != nil {
				return err
			}
			for _, m := range msgs {
				targets = append(targets, m.Sequence)
			}
		} else if targets, err = seqs(rest[1:]); err != nil {
			return err
		}
		if len(targets) == 0 {
			if *all {
				fmt.Fprintln(out, "no dead letters")
				return nil
			}
			return errors.New("usage: surge deadletter replay SEQ... | replay --all")
		}
		for _, seq := range targets {
			subject, err := replayDeadLetter(ctx, js, dl, seq)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "replayed dead letter %d to %s\n", seq, subject)
		}
		return nil
	default:
		return fmt.Errorf("unknown deadletter command %q (list, show, replay)", rest[0])
	}
}

// listDeadLetters reads every message of DEAD_LETTER, oldest first.
func listDeadLetters(ctx context.Context, dl jetstream.Stream) ([]*jetstream.RawStreamMsg, error) {
	info, err := dl.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	var out []*jetstream.RawStreamMsg
	if info.State.Msgs == 0 {
		return nil, nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := dl.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted: replayed or aged out
		}
		if err != nil {
			return nil, fmt.Errorf("dead letter %d: %w", seq, err)
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Sequence < out[j].Sequence })
	return out, nil
}

func printDeadLetters(out io.Writer, msgs []*jetstream.RawStreamMsg) {
	if len(msgs) == 0 {
		fmt.Fprintln(out, "no dead letters")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tFROM\tSOURCE\tBATCH\tBYTES\tREASON")
	for _, m := range msgs {
		reason := m.Header.Get(streams.HeaderReason)
		if len(reason) > 80 {
			reason = reason[:77] + "..."
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", m.Sequence, m.Time.UTC().Format(time.RFC3339),
			m.Subject, deadLetterSource(m), orDash(m.Header.Get(streams.HeaderBatchID)), len(m.Data), strings.ReplaceAll(reason, "\n", " "))
	}
	_ = tw.Flush()
	fmt.Fprintf(out, "%d dead letters; `surge deadletter show SEQ` to inspect, `replay SEQ` or `replay --all` to replay\n", len(msgs))
}

func showDeadLetter(out io.Writer, m *jetstream.RawStreamMsg) {
	fmt.Fprintf(out, "sequence: %d\ntime:     %s\nsubject:  %s\nbytes:    %d\nheaders:\n", m.Sequence, m.Time.UTC().Format(time.RFC3339Nano), m.Subject, len(m.Data))
	keys := make([]string, 0, len(m.Header))
	for k := range m.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range m.Header[k] {
			fmt.Fprintf(out, "  %s: %s\n", k, v)
		}
	}
	source := m.Header.Get(streams.HeaderSource)
	switch {
	case strings.HasPrefix(source, "batches."): // the sink's: a batch
		showBatch(out, m.Data)
	case strings.HasPrefix(source, "events.") || strings.HasPrefix(source, "ingest."):
		// The batcher's and the partitioner's: a message of encoded events
		// they could not read.
		showEvents(out, m.Data)
	default:
		// An item as sent: a Segment message (ingest's) or a producer's
		// event or message (the partitioner's), JSON where it is readable.
		showItem(out, m)
	}
}

// showBodyBytes is how much of a body show prints as text.
const showBodyBytes = 4 << 10

func showBatch(out io.Writer, data []byte) {
	b, err := batch.Decode(data)
	if err != nil {
		fmt.Fprintf(out, "body: not a readable batch: %v\n", err)
		showText(out, data)
		return
	}
	fmt.Fprintf(out, "body: batch of shard %d, EVENTS sequences %d-%d, %d rows; the first rows:\n", b.Shard, b.FirstSeq, b.LastSeq, b.Len())
	for i := range min(b.Len(), 5) {
		fmt.Fprintf(out, "  seq=%d event_id=%s tenant=%s user_id=%s type=%s ts=%s properties=%s\n", b.Seq[i], b.EventID[i], b.Tenant[i],
			b.UserID[i], b.Type[i], time.UnixMicro(b.TS[i]).UTC().Format(time.RFC3339Nano), b.Properties[i])
	}
}

func showEvents(out io.Writer, data []byte) {
	events, err := event.Decode(data)
	if err != nil {
		fmt.Fprintf(out, "body: not readable as encoded events: %v; as text:\n", err)
		showText(out, data)
		return
	}
	fmt.Fprintf(out, "body: %d encoded events; the first:\n", len(events))
	for _, e := range events[:min(len(events), 5)] {
		fmt.Fprintf(out, "  event_id=%s tenant=%s user_id=%s type=%s ts=%s properties=%s\n", e.EventID, e.Tenant,
			e.UserID, e.Type, e.TS.UTC().Format(time.RFC3339Nano), e.Properties)
	}
}

// showItem prints one item as sent, with the id its sender gave it.
func showItem(out io.Writer, m *jetstream.RawStreamMsg) {
	for _, id := range []string{"messageId", "event_id"} {
		if v := itemID(m, id); v != "" {
			fmt.Fprintf(out, "%s: %s\n", id, v)
		}
	}
	fmt.Fprintf(out, "body (%d bytes, as sent):\n", len(m.Data))
	showText(out, m.Data)
}

// idInReason finds the messageId a reason names: ingest names the message
// it keeps only an excerpt of (message_too_large).
var idInReason = regexp.MustCompile(`messageId ("(?:[^"\\]|\\.)*")`)

// itemID is the string field key of the item m holds: read from its
// JSON, else from the start of a body cut short, else from its reason.
func itemID(m *jetstream.RawStreamMsg, key string) string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(m.Data, &fields) == nil {
		var v string
		if json.Unmarshal(fields[key], &v) == nil {
			return v
		}
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(m.Data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			break
		}
		var s string
		if tok == key && json.Unmarshal(v, &s) == nil {
			return s
		}
	}
	if match := idInReason.FindStringSubmatch(m.Header.Get(streams.HeaderReason)); key == "messageId" && match != nil {
		if id, err := strconv.Unquote(match[1]); err == nil {
			return id
		}
	}
	return ""
}

// showText prints data as text on one line, its first showBodyBytes,
// with control characters and bytes that are not UTF-8 escaped as Go
// escapes them.
func showText(out io.Writer, data []byte) {
	text := data[:min(len(data), showBodyBytes)]
	var b strings.Builder
	for len(text) > 0 {
		r, size := utf8.DecodeRune(text)
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, text[0])
		case unicode.IsControl(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.Write(text[:size])
		}
		text = text[size:]
	}
	fmt.Fprintf(out, "  %s\n", b.String())
	if n := len(data) - showBodyBytes; n > 0 {
		fmt.Fprintf(out, "  ... %d more bytes\n", n)
	}
}

// deadLetterSource says where a dead letter came from: the service that
// made it, the shard or tenant it concerns, and the message (subject and
// stream sequence) or, for ingest, the HTTP request item it was.
func deadLetterSource(m *jetstream.RawStreamMsg) string {
	// deadletter.<service>.shard.<k> or deadletter.<service>.invalid.<tenant>
	tokens := strings.SplitN(m.Subject, ".", 4)
	if len(tokens) < 4 {
		tokens = append(tokens, make([]string, 4-len(tokens))...)
	}
	service, kind, last := tokens[1], tokens[2], tokens[3]
	source := m.Header.Get(streams.HeaderSource)
	tenant := m.Header.Get(streams.HeaderTenant)
	if tenant == "" && kind == "invalid" {
		tenant = last
	}
	if tenant == "" {
		tenant, _ = strings.CutPrefix(source, "ingest.") // a corrupt INGEST message
		if t, ok := streams.ProducerTenant(source); ok {
			tenant = t
		}
	}
	var b strings.Builder
	b.WriteString(service)
	switch {
	case service == "sink" || service == "batcher":
		b.WriteString(" shard " + last)
	case tenant != "":
		b.WriteString(" tenant " + tenant)
	}
	b.WriteString(": ")
	if source != "" {
		b.WriteString(source + ":" + m.Header.Get(streams.HeaderSourceSeq))
	} else {
		b.WriteString("HTTP request")
	}
	if i := m.Header.Get(streams.HeaderSourceIndex); i != "" {
		b.WriteString(" item " + i)
	}
	return b.String()
}

// replayDeadLetter publishes dead letter seq to its source subject, marked
// Surge-Replay, waits for JetStream's ack and deletes the dead letter. The
// message id "replay:<seq>" makes a replay repeated inside the dedup
// window (say after a crash before the delete) a no-op; the sink's check
// of the sequences it holds covers a later repeat.
func replayDeadLetter(ctx context.Context, js jetstream.JetStream, dl jetstream.Stream, seq uint64) (string, error) {
	m, err := dl.GetMsg(ctx, seq)
	if err != nil {
		return "", fmt.Errorf("dead letter %d: %w", seq, err)
	}
	subject := m.Header.Get(streams.HeaderSource)
	if subject == "" {
		return "", fmt.Errorf("dead letter %d has no %s header: nowhere to replay it", seq, streams.HeaderSource)
	}
	msg := nats.NewMsg(subject)
	msg.Data = m.Data
	for _, k := range []string{streams.HeaderBatchID, streams.HeaderRows, "traceparent", "tracestate"} {
		if v := m.Header.Get(k); v != "" {
			msg.Header.Set(k, v)
		}
	}
	msg.Header.Set(streams.HeaderReplay, strconv.FormatUint(seq, 10))
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(pctx, msg, jetstream.WithMsgID("replay:"+strconv.FormatUint(seq, 10))); err != nil {
		return "", fmt.Errorf("replay dead letter %d to %s: %w", seq, subject, err)
	}
	if err := dl.DeleteMsg(ctx, seq); err != nil {
		return "", fmt.Errorf("replayed dead letter %d but could not delete it (replaying it again inserts nothing twice): %w", seq, err)
	}
	return subject, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
