package status

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Assess lists what is unhealthy in r, judged at r.Time: per shard a
// missing owner or consumer and a stalled or lagging backlog (the INGEST
// backlog too); per stream a missing stream, a fill over the threshold
// and replicas not current; waiting dead letters; instances not ready;
// ClickHouse servers that did not answer. It reads nothing but r.
func Assess(r Report, th Thresholds) []Problem {
	var out []Problem
	reported := serviceStalls(r.Instances)

	if p, ok := assessBacklog(r.Ingest, r.Time, th, "INGEST", nil); ok {
		p.Subject, p.Shard = "partitioner", -1
		out = append(out, p)
	}
	if len(r.Shards) == 0 {
		out = append(out, Problem{Kind: KindNoConsumer, Subject: "shards", Shard: -1,
			Detail: "no shard found: no consumer reads EVENTS or BATCHES, no lease is held, ClickHouse holds no rows (give --shards to name them)"})
	}
	if r.LeasesUnreadable != "" {
		out = append(out, Problem{Kind: KindUnreadable, Subject: "leases", Shard: -1, Detail: r.LeasesUnreadable})
	}
	unreadable := map[string]bool{}
	for _, st := range r.Streams {
		unreadable[st.Name] = st.Unreadable != ""
	}
	for _, s := range r.Shards {
		subject := "shard " + strconv.Itoa(s.Shard)
		hops := []struct {
			service, owner, stream string
			b                      Backlog
		}{
			{"batcher", s.BatcherOwner, "EVENTS", s.Events},
			{"sink", s.SinkOwner, "BATCHES", s.Batches},
		}
		for _, h := range hops {
			if unreadable[h.stream] {
				continue // its stream's problem says it
			}
			if h.owner == "" {
				mode := r.Ownership[h.service]
				out = append(out, Problem{Kind: KindUnowned, Subject: subject, Shard: s.Shard,
					Detail: fmt.Sprintf("no %s owns it (%s ownership)", h.service, mode)})
				continue
			}
			if h.b.Consumer == "" {
				out = append(out, Problem{Kind: KindNoConsumer, Subject: subject, Shard: s.Shard,
					Detail: fmt.Sprintf("no %s consumer reads %s", h.service, subjectOf(h.stream, s.Shard))})
				continue
			}
			if p, ok := assessBacklog(h.b, r.Time, th, h.stream, reported[stallKey{h.service, s.Shard}]); ok {
				p.Subject, p.Shard = subject, s.Shard
				out = append(out, p)
			}
		}
	}

	for _, st := range r.Streams {
		subject := "stream " + st.Name
		if st.Missing {
			out = append(out, Problem{Kind: KindMissing, Subject: subject, Shard: -1, Detail: "the stream does not exist"})
			continue
		}
		if st.Unreadable != "" {
			out = append(out, Problem{Kind: KindUnreadable, Subject: subject, Shard: -1, Detail: st.Unreadable})
			if st.Replicas == 0 {
				continue // nothing but the error was read
			}
		}
		if st.MaxBytes > 0 && float64(st.Bytes) >= th.StreamFull*float64(st.MaxBytes) {
			out = append(out, Problem{Kind: KindStreamFull, Subject: subject, Shard: -1,
				Detail: fmt.Sprintf("%s of its %s limit (%.0f%%)", Bytes(st.Bytes), Bytes(uint64(st.MaxBytes)), 100*float64(st.Bytes)/float64(st.MaxBytes))})
		}
		if st.MaxMsgs > 0 && float64(st.Messages) >= th.StreamFull*float64(st.MaxMsgs) {
			out = append(out, Problem{Kind: KindStreamFull, Subject: subject, Shard: -1,
				Detail: fmt.Sprintf("%d of its %d message limit", st.Messages, st.MaxMsgs)})
		}
		switch {
		case st.Leader == "" && st.Replicas > 1:
			out = append(out, Problem{Kind: KindReplicas, Subject: subject, Shard: -1, Detail: "no leader"})
		case st.Current < st.Replicas:
			detail := fmt.Sprintf("%d of %d replicas current", st.Current, st.Replicas)
			if len(st.Behind) > 0 {
				detail += "; behind: " + strings.Join(st.Behind, ", ")
			}
			out = append(out, Problem{Kind: KindReplicas, Subject: subject, Shard: -1, Detail: detail})
		}
	}

	if n, detail := deadLetterSummary(r.DeadLetters); n > 0 {
		out = append(out, Problem{Kind: KindDeadLetters, Subject: "stream DEAD_LETTER", Shard: -1,
			Detail: fmt.Sprintf("%d waiting (%s); inspect with `surge deadletter list`", n, detail)})
	}

	for _, in := range r.Instances {
		if !in.Ready {
			out = append(out, Problem{Kind: KindNotReady, Subject: in.Name, Shard: -1, Detail: strings.Join(in.Reasons, "; ")})
		}
	}
	for _, s := range r.ClickHouse {
		if s.Error != "" {
			out = append(out, Problem{Kind: KindUnreachable, Subject: "clickhouse " + s.Addr, Shard: -1, Detail: s.Error})
		}
	}
	return out
}

// Warn lists what is worth a look in r and leaves it healthy (see the
// warning kinds for why): per table, columns agreed longer than
// th.PendingDDL ago and still missing on a ClickHouse server, columns
// whose DDL failed for good and a column count at its limit; and a schema
// bucket that did not answer. It reads nothing but r.
func Warn(r Report, th Thresholds) []Problem {
	var out []Problem
	if r.SchemaUnreadable != "" {
		out = append(out, Problem{Kind: KindSchemaUnreadable, Subject: "schema", Shard: -1, Detail: r.SchemaUnreadable})
	}
	for _, ts := range r.Schemas {
		subject := "table " + ts.Table
		if p, ok := pendingDDL(ts, r.Time, th.PendingDDL); ok {
			p.Subject = subject
			out = append(out, p)
		}
		if len(ts.Failed) > 0 {
			out = append(out, Problem{Kind: KindDDLFailed, Subject: subject, Shard: -1,
				Detail: fmt.Sprintf("%d %s whose DDL failed for good, no longer filled (the values stay in properties): %s",
					len(ts.Failed), plural(len(ts.Failed), "column"), strings.Join(ts.Failed, ", "))})
		}
		if ts.Limit > 0 && ts.Columns >= ts.Limit {
			out = append(out, Problem{Kind: KindColumnLimit, Subject: subject, Shard: -1,
				Detail: fmt.Sprintf("%d of %d typed columns: new keys stay unpromoted (`surge schema unpromoted`)", ts.Columns, ts.Limit)})
		}
	}
	return out
}

// pendingDDL names the columns of ts agreed at least after ago and still
// missing on some server, grouped by the servers that lack them (a server
// behind lacks them all), at most eight names a group.
func pendingDDL(ts TableSchema, now time.Time, after time.Duration) (Problem, bool) {
	var (
		late   int
		oldest time.Duration
		order  []string            // the groups' servers, as first seen
		names  map[string][]string // by servers
	)
	for _, p := range ts.Pending {
		age := now.Sub(p.Added)
		if age < after {
			continue
		}
		late, oldest = late+1, max(oldest, age)
		servers := strings.Join(p.Missing, ", ")
		if names == nil {
			names = map[string][]string{}
		}
		if _, seen := names[servers]; !seen {
			order = append(order, servers)
		}
		names[servers] = append(names[servers], p.Name)
	}
	if late == 0 {
		return Problem{}, false
	}
	const shown = 8
	groups := make([]string, len(order))
	for i, servers := range order {
		n := names[servers]
		g := strings.Join(n[:min(len(n), shown)], ", ")
		if len(n) > shown {
			g += fmt.Sprintf(" and %d more", len(n)-shown)
		}
		groups[i] = g + " on " + servers
	}
	return Problem{Kind: KindPendingDDL, Shard: -1, Detail: fmt.Sprintf("%d %s agreed %s ago or more (the oldest %s) and still missing: %s; `surge schema ls` shows each server",
		late, plural(late, "column"), Age(after), Age(oldest), strings.Join(groups, "; "))}, true
}

// assessBacklog judges one backlog: stalled when work waits and nothing
// moved (no progress since the later of the last progress and the oldest
// waiting message's arrival) for th.Stall, or when its service says so
// (reasons); else lagging when the oldest waiting message is older than
// th.MaxLag.
func assessBacklog(b Backlog, now time.Time, th Thresholds, stream string, reasons []string) (Problem, bool) {
	if b.Pending == 0 && len(reasons) == 0 {
		return Problem{}, false
	}
	waiting := fmt.Sprintf("%d waiting in %s", b.Pending, stream)
	var age time.Duration
	if b.Oldest != nil {
		age = now.Sub(*b.Oldest)
		waiting += ", oldest " + Age(age)
	}
	since := b.Oldest
	if b.LastProgress != nil && (since == nil || b.LastProgress.After(*since)) {
		since = b.LastProgress
	}
	stalled := b.Pending > 0 && since != nil && now.Sub(*since) >= th.Stall
	if stalled || len(reasons) > 0 {
		detail := waiting
		if since != nil {
			detail += ", no progress for " + Age(now.Sub(*since))
		}
		if len(reasons) > 0 {
			detail += " (" + strings.Join(reasons, "; ") + ")"
		}
		return Problem{Kind: KindStalled, Detail: detail}, true
	}
	if b.Oldest != nil && age >= th.MaxLag {
		return Problem{Kind: KindLagging, Detail: waiting}, true
	}
	return Problem{}, false
}

type stallKey struct {
	service string
	shard   int
}

// stalledShard matches a watchdog's readiness reason, "stalled shard 3:
// 2 pending, no progress for 30s, waiting on ...".
var stalledShard = regexp.MustCompile(`^stalled shard (\d+):`)

// serviceStalls collects the shards the batchers' and sinks' own
// watchdogs report stalled on /readyz, with the instance's reason.
func serviceStalls(instances []Instance) map[stallKey][]string {
	out := map[stallKey][]string{}
	for _, in := range instances {
		for _, reason := range in.Reasons {
			m := stalledShard.FindStringSubmatch(reason)
			if m == nil {
				continue
			}
			k, _ := strconv.Atoi(m[1])
			key := stallKey{in.Service, k}
			out[key] = append(out[key], in.Name+": "+reason)
		}
	}
	return out
}

// deadLetterSummary totals the dead letters and lists them by subject.
func deadLetterSummary(bySubject map[string]uint64) (uint64, string) {
	var total uint64
	subjects := make([]string, 0, len(bySubject))
	for s, n := range bySubject {
		if n > 0 {
			total += n
			subjects = append(subjects, s)
		}
	}
	slices.Sort(subjects)
	parts := make([]string, len(subjects))
	for i, s := range subjects {
		parts[i] = fmt.Sprintf("%s: %d", s, bySubject[s])
	}
	return total, strings.Join(parts, ", ")
}

func subjectOf(stream string, k int) string {
	if stream == "EVENTS" {
		return "events.shard." + strconv.Itoa(k)
	}
	return "batches.shard." + strconv.Itoa(k)
}

// Age prints a duration for a human at a glance: 850ms, 12s, 4m10s, 1m,
// 3h5m.
func Age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		d = d.Round(time.Second)
	default:
		d = d.Round(time.Minute)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Bytes prints a byte count in binary units: 512 B, 1.5 KiB, 8.0 GiB.
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
