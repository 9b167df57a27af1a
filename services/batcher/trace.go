package batcher

import (
	"context"

	"go.opentelemetry.io/otel/trace"
)

// batchTrace gathers, while a batch fills, the trace context of its span.
//
// A batch has many parents: its span links to the publish spans of the
// sampled messages it holds (at most MaxLinks). Its parent is the first
// sampled message's span, so with a parent-based sampler a batch is
// recorded exactly when it holds a sampled message and appears in that
// message's trace; a batch of only unsampled messages takes the first
// one's (unsampled) context, records nothing, and carries the unsampled
// flag on to the sink, which records nothing either. A batch of messages
// without any trace context is a new trace, left to the sampler.
type batchTrace struct {
	parent  trace.SpanContext
	links   []trace.Link
	dropped int // sampled messages past MaxLinks
}

// add notes the span context a message carries.
func (t *batchTrace) add(sc trace.SpanContext, maxLinks int) {
	if !sc.IsValid() {
		return
	}
	if !t.parent.IsSampled() && (!t.parent.IsValid() || sc.IsSampled()) {
		t.parent = sc
	}
	if !sc.IsSampled() {
		return
	}
	if len(t.links) < maxLinks {
		t.links = append(t.links, trace.Link{SpanContext: sc})
	} else {
		t.dropped++
	}
}

// context is the parent context of the batch span.
func (t *batchTrace) context() context.Context {
	if !t.parent.IsValid() {
		return context.Background()
	}
	return trace.ContextWithRemoteSpanContext(context.Background(), t.parent)
}
