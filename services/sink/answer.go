package sink

import (
	"context"
	"fmt"
)

// answer runs q, a query and the reading of its whole result, and returns
// what q returns, or ctx's error once ctx ends first.
//
// The driver (clickhouse-go v2.25) bounds a query by its context only
// until the first block of the answer; it reads the rest with no deadline,
// and the context cannot end that read. A server that stops in the middle
// of an answer (a SIGSTOP, a hung disk, a paused VM) would hold the reader,
// and the shard loop or the schema check behind it, for as long as it
// stays stopped. answer returns at the deadline instead, and q goes on in
// its goroutine until the server answers or the connection fails; its
// result is dropped then. q must write only its own variables, never the
// caller's.
func answer[T any](ctx context.Context, q func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1) // q's send never blocks, answered or not
	go func() {
		v, err := q()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("no answer from the server: %w", context.Cause(ctx))
	}
}

// queryUint is the one UInt64 that query q, with args, answers on
// replica r.
func queryUint(ctx context.Context, r *replica, q string, args ...any) (uint64, error) {
	return answer(ctx, func() (uint64, error) {
		var n uint64
		err := r.conn.QueryRow(ctx, q, args...).Scan(&n)
		return n, err
	})
}
