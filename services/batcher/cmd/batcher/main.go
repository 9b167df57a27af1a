// Command batcher cuts each owned shard of EVENTS into columnar batches.
package main

import (
	"context"
	"os"

	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/services/batcher"
)

func main() {
	cfg := batcher.DefaultConfig()
	os.Exit(service.Main("batcher", &cfg, func(ctx context.Context, deps service.Deps) error {
		s, err := batcher.New(cfg, deps)
		if err != nil {
			return err
		}
		return s.Run(ctx)
	}))
}
