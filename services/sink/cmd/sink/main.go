// Command sink moves batches from the BATCHES stream into ClickHouse.
package main

import (
	"context"
	"os"

	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/services/sink"
)

func main() {
	cfg := sink.DefaultConfig()
	os.Exit(service.Main("sink", &cfg, func(ctx context.Context, deps service.Deps) error {
		s, err := sink.New(cfg, deps)
		if err != nil {
			return err
		}
		return s.Run(ctx)
	}))
}
