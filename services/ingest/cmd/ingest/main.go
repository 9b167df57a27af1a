// Command ingest runs Surge's HTTP event API.
package main

import (
	"context"
	"os"

	"github.com/surge-events/surge/pkg/service"
	"github.com/surge-events/surge/services/ingest"
)

func main() {
	cfg := ingest.DefaultConfig()
	os.Exit(service.Main("ingest", &cfg, func(ctx context.Context, deps service.Deps) error {
		s, err := ingest.New(cfg, deps)
		if err != nil {
			return err
		}
		return s.Run(ctx)
	}))
}
