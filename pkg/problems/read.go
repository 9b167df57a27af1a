package problems

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/surge-events/surge/pkg/streams"
)

// Query says which aggregates Read reads.
type Query struct {
	// Tenant is whose problems: "" for every tenant's (operators only).
	Tenant string
	// Since and Until bound when the aggregates were stored; a zero Until
	// is now.
	Since, Until time.Time
	// Limit is the most aggregates read (default DefaultReadLimit); past
	// it the result is truncated.
	Limit int
}

// DefaultReadLimit bounds the aggregates one Read reads.
const DefaultReadLimit = 10000

// fetchBatch is how many aggregates one fetch asks for.
const fetchBatch = 500

// Read reads, in the order they were stored, the aggregates of q's tenant
// stored from q.Since to q.Until, at most q.Limit: truncated says there
// were more. It reads with an ephemeral consumer of its own, in memory and
// without acks, filtered on the tenant's subject and starting at Since,
// which it deletes when done.
func Read(ctx context.Context, js jetstream.JetStream, q Query) (aggs []Aggregate, truncated bool, err error) {
	if q.Limit <= 0 {
		q.Limit = DefaultReadLimit
	}
	if q.Until.IsZero() {
		q.Until = time.Now()
	}
	subject := streams.ProblemsAll
	if q.Tenant != "" {
		subject = streams.ProblemsSubject(q.Tenant)
	}
	since := q.Since.UTC()
	cons, err := js.CreateConsumer(ctx, streams.Problems, jetstream.ConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &since,
		FilterSubject:     subject,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: time.Minute, // gone soon even when the delete below is lost
	})
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", streams.Problems, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, streams.Problems, cons.CachedInfo().Name)
	}()

	// What the consumer has to deliver now; aggregates stored later are
	// past Until anyway, or the next Read's.
	left := cons.CachedInfo().NumPending
	for left > 0 {
		if len(aggs) >= q.Limit {
			return aggs, true, nil
		}
		n := int(min(left, uint64(fetchBatch), uint64(q.Limit-len(aggs))))
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return aggs, false, fmt.Errorf("read %s: %w", streams.Problems, err)
		}
		got := 0
		done := false
		for m := range batch.Messages() {
			got++
			left--
			meta, err := m.Metadata()
			if err != nil || done {
				continue
			}
			if meta.Timestamp.After(q.Until) {
				done = true // stored after the question: the rest are too
				continue
			}
			var a Aggregate
			if err := json.Unmarshal(m.Data(), &a); err != nil {
				continue // not one of ours: skip it rather than fail the answer
			}
			aggs = append(aggs, a)
			left = min(left, meta.NumPending)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return aggs, false, fmt.Errorf("read %s: %w", streams.Problems, err)
		}
		if done || got == 0 {
			break
		}
	}
	return aggs, false, nil
}

// Summary is the problems of one reason, folded from its aggregates: what
// GET /v1/problems answers per reason.
type Summary struct {
	Reason string `json:"reason"`
	Count  int64  `json:"count"`
	// Fields count the problems per field, most first, at most MaxFields
	// ("" is a problem of the whole event or request).
	Fields []FieldCount `json:"fields,omitempty"`
	// First and Last are when the first and the last were met.
	First time.Time `json:"first"`
	Last  time.Time `json:"last"`
	// Samples are the first few occurrences, at most Fold's maxSamples.
	Samples []Sample `json:"samples,omitempty"`
	// Docs links to the explanation of the reason.
	Docs string `json:"docs"`
}

// FieldCount is how many problems of a reason one field had.
type FieldCount struct {
	Field string `json:"field"`
	Count int64  `json:"count"`
}

// MaxFields bounds the fields a Summary lists.
const MaxFields = 20

// Fold folds aggregates into one Summary per reason, in Reasons' order,
// each with at most maxSamples samples (the oldest) and MaxFields fields.
func Fold(aggs []Aggregate, maxSamples int) []Summary {
	by := make(map[string]*Summary)
	fields := make(map[string]map[string]int64)
	for i := range aggs {
		a := &aggs[i]
		s := by[a.Reason]
		if s == nil {
			s = &Summary{Reason: a.Reason, First: a.First, Last: a.Last, Docs: Docs(a.Reason)}
			by[a.Reason] = s
			fields[a.Reason] = make(map[string]int64)
		}
		s.Count += a.Count
		if a.First.Before(s.First) {
			s.First = a.First
		}
		if a.Last.After(s.Last) {
			s.Last = a.Last
		}
		fields[a.Reason][a.Field] += a.Count
		for _, smp := range a.Samples {
			if len(s.Samples) < maxSamples {
				s.Samples = append(s.Samples, smp)
			}
		}
	}
	out := make([]Summary, 0, len(by))
	for _, s := range by {
		for f, n := range fields[s.Reason] {
			s.Fields = append(s.Fields, FieldCount{Field: f, Count: n})
		}
		slices.SortFunc(s.Fields, func(x, y FieldCount) int {
			return cmp.Or(cmp.Compare(y.Count, x.Count), cmp.Compare(x.Field, y.Field))
		})
		if len(s.Fields) > MaxFields {
			s.Fields = s.Fields[:MaxFields]
		}
		out = append(out, *s)
	}
	slices.SortFunc(out, func(x, y Summary) int {
		return cmp.Or(cmp.Compare(reasonRank(x.Reason), reasonRank(y.Reason)), cmp.Compare(x.Reason, y.Reason))
	})
	return out
}

func reasonRank(reason string) int {
	if i := slices.Index(Reasons, reason); i >= 0 {
		return i
	}
	return len(Reasons)
}
