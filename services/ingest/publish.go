package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/surge-events/surge/pkg/event"
	"github.com/surge-events/surge/pkg/streams"
	"github.com/surge-events/surge/pkg/telemetry"
)

// publish stores the request's events as one INGEST message and waits for
// JetStream's ack, at most PublishTimeout. It says whether JetStream had
// the message already, or returns the reply of a failure.
func (s *Service) publish(ctx context.Context, tenant, msgID string, events []event.Event) (duplicate bool, rep reply) {
	n := len(events)
	conn := s.conn.Load()
	if conn == nil || !conn.NC.IsConnected() {
		return false, reply{status: http.StatusServiceUnavailable, reason: reasonUnavailable, events: n,
			message: "event store unavailable; retry later"}
	}

	subject := streams.IngestSubject(tenant)
	ctx, span := s.tracer.Start(ctx, "publish "+subject, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		semconv.MessagingSystemKey.String("nats"),
		semconv.MessagingDestinationName(subject),
		semconv.MessagingBatchMessageCount(n),
		attribute.String("surge.tenant", tenant),
	))
	defer span.End()
	msg := streams.IngestMsg{Tenant: tenant, ID: msgID, Events: events}.Msg(ctx)

	// Both the connection and the stream bound a message, headers included.
	maxSize := min(conn.NC.MaxPayload(), int64(s.cfg.Streams.MaxMsgSize))
	if size := int64(len(msg.Data) + headerSize(msg.Header)); size > maxSize {
		span.SetStatus(codes.Error, "message too large")
		return false, reply{status: http.StatusRequestEntityTooLarge, reason: reasonMessageTooLarge, events: n,
			message: fmt.Sprintf("request encodes to %d bytes, more than the %d one message may hold; send fewer events", size, maxSize)}
	}

	pubCtx, cancel := context.WithTimeout(ctx, s.cfg.Ingest.PublishTimeout)
	defer cancel()
	start := time.Now()
	ack, err := conn.JS.PublishMsg(pubCtx, msg, jetstream.WithExpectStream(streams.Ingest))
	s.metrics.publishDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "publish")
		rep = publishReject(err, s.cfg.Ingest.PublishTimeout)
		rep.events = n
		s.logger.Warn("publish events", append(telemetry.TraceFields(ctx),
			zap.String("tenant", tenant), zap.Int("events", n), zap.String("reason", rep.reason), zap.Error(err))...)
		return false, rep
	}
	span.SetAttributes(attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)), attribute.Bool("surge.duplicate", ack.Duplicate))
	return ack.Duplicate, reply{}
}

// deadLetter publishes each invalid item of a request stored in part to
// DEAD_LETTER, body = the item as sent, and waits for each ack. Ids
// derived from the request's make a retry's dead letters duplicates. It
// returns how many it dead-lettered.
func (s *Service) deadLetter(ctx context.Context, tenant, msgID string, invalid []invalidItem) (int, error) {
	conn := s.conn.Load()
	if conn == nil {
		return 0, nats.ErrConnectionClosed // not reached: ingest serves only once connected
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Ingest.PublishTimeout)
	defer cancel()
	for n, it := range invalid {
		problems, _ := json.Marshal(it.problems) // a slice of plain structs cannot fail
		dl := streams.DeadLetterMsg{
			Service:  "ingest",
			Subject:  streams.IngestInvalidSubject(tenant),
			Data:     it.data,
			Reason:   event.Problems(it.problems).Reasons(),
			Index:    it.index,
			HasIndex: true,
			Tenant:   tenant,
			Problems: string(problems),
		}.Msg()
		// No stream sequence to name it by: the request's id does.
		dl.Header.Del(jetstream.MsgIDHeader)
		if msgID != "" {
			dl.Header.Set(jetstream.MsgIDHeader, "ingest:"+msgID+":"+strconv.Itoa(it.index))
		}
		telemetry.Inject(ctx, dl.Header)
		if _, err := conn.JS.PublishMsg(ctx, dl, jetstream.WithExpectStream(streams.DeadLetter)); err != nil {
			return n, fmt.Errorf("dead-letter message %d: %w", it.index, err)
		}
	}
	return len(invalid), nil
}

func publishReject(err error, timeout time.Duration) reply {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload),
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
		return reject(http.StatusRequestEntityTooLarge, reasonMessageTooLarge, "request too large for one message; send fewer events")
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return reject(http.StatusServiceUnavailable, reasonTimeout,
			fmt.Sprintf("event store did not acknowledge within %s; retry later", timeout))
	default:
		return reject(http.StatusServiceUnavailable, reasonUnavailable, "event store unavailable; retry later")
	}
}

// headerSize is the wire size of NATS headers: "NATS/1.0\r\n", one
// "Key: value\r\n" line per value, and a closing "\r\n".
func headerSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + len(": \r\n")
		}
	}
	return n
}
