package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/surge-events/surge/pkg/retry"
)

// settleLimit bounds the wait for ClickHouse's merges to end.
const settleLimit = 2 * time.Minute

// settleMerges waits until no server of addrs is merging parts, so that
// a timed phase starts on an idle ClickHouse instead of paying for the
// merges of the phases before it. It returns how long it waited; past
// settleLimit it stops waiting and says so.
func settleMerges(ctx context.Context, addrs []string) (time.Duration, error) {
	start := time.Now()
	conns, closeAll, err := serverConns(addrs)
	if err != nil {
		return 0, err
	}
	defer closeAll()
	for {
		busy := false
		for i, c := range conns {
			var n uint64
			if err := c.QueryRow(ctx, "SELECT count() FROM system.merges").Scan(&n); err != nil {
				return time.Since(start), fmt.Errorf("merges on %s: %w", addrs[i], err)
			}
			busy = busy || n > 0
		}
		if !busy {
			return time.Since(start), nil
		}
		if time.Since(start) > settleLimit {
			fmt.Printf("bench: ClickHouse still merging after %s; going on\n", settleLimit)
			return time.Since(start), nil
		}
		if !retry.Sleep(ctx, 50*time.Millisecond) {
			return time.Since(start), ctx.Err()
		}
	}
}

// serverConns opens one connection to each server of addrs, for the
// bench's own statements (up to 5 minutes each: OPTIMIZE FINAL of a large
// table); closeAll closes them, once each.
func serverConns(addrs []string) (conns []driver.Conn, closeAll func(), err error) {
	closeAll = func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for _, addr := range addrs {
		c, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, MaxOpenConns: 1,
			Settings: clickhouse.Settings{"max_execution_time": 300}})
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("open %s: %w", addr, err)
		}
		conns = append(conns, c)
	}
	return conns, closeAll, nil
}
