// Command partitioner spreads the events of INGEST over EVENTS' shards.
package main

import (
	"context"
	"os"

	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/services/partitioner"
)

func main() {
	cfg := partitioner.DefaultConfig()
	os.Exit(service.Main("partitioner", &cfg, func(ctx context.Context, deps service.Deps) error {
		s, err := partitioner.New(cfg, deps)
		if err != nil {
			return err
		}
		return s.Run(ctx)
	}))
}
