// Package arrowcmp measures Surge's batch codec against Apache Arrow IPC
// with zstd on the same 10k-row batch.
//
// It is a module of its own so that Arrow never enters the dependency
// graph of pkg and of every service that requires pkg. It is outside the
// workspace; run it with
//
//	cd pkg/batch/internal/arrowcmp && GOWORK=off go test -bench . -benchmem
package arrowcmp
