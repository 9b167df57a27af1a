// Package ports hands out free loopback TCP ports for the servers a test
// or the local cluster starts as separate processes, which bind them
// later themselves.
package ports

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the first port Free draws from.
const lowest = 15000

// handedOut is every port Free returned in this process: a port handed
// out and not bound yet looks free, and the next call must not take it
// (a test picks its ingest ports, then starts servers that pick theirs).
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// rangeFile holds the kernel's ephemeral port range.
const rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// Free returns n distinct loopback TCP ports that were free a moment ago.
//
// They are drawn from below the kernel's ephemeral range
// (ip_local_port_range, 32768-60999 by default), from which every
// outgoing connection on the machine takes its local port, as does a bind
// to port 0. A port from that range can be taken between this call and
// the server's own bind by any connection: a ClickHouse replica fetching
// a part, a NATS route, a test's client. That happened to a cluster
// service's admin port. No port is handed out twice in one process.
// Where the range cannot be read (not Linux) or leaves no room below it,
// the kernel picks the ports instead.
func Free(n int) ([]int, error) {
	low, err := ephemeralLow()
	if err != nil || low-lowest < 1000 {
		return fromKernel(n)
	}
	handedOut.Lock()
	defer handedOut.Unlock()
	if handedOut.ports == nil {
		handedOut.ports = map[int]bool{}
	}
	seen := make(map[int]bool, n)
	out := make([]int, 0, n)
	for tries := 0; len(out) < n; tries++ {
		if tries == 100*n {
			return nil, fmt.Errorf("free port: %d of %d found below %d after %d tries", len(out), n, low, tries)
		}
		p := lowest + rand.IntN(low-lowest)
		if seen[p] || handedOut.ports[p] {
			continue
		}
		seen[p] = true
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // taken
		}
		if err := ln.Close(); err != nil {
			return nil, fmt.Errorf("free port %d: %w", p, err)
		}
		out = append(out, p)
	}
	for _, p := range out {
		handedOut.ports[p] = true
	}
	return out, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() (int, error) {
	data, err := os.ReadFile(rangeFile)
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return 0, errors.New(rangeFile + ": not two numbers")
	}
	return strconv.Atoi(fields[0])
}

// fromKernel returns n distinct ports the kernel picks for port 0.
func fromKernel(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	out := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
