package schema_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

// addColumn is a change that adds p_<name> for /<name> unless a column
// for the path exists, as a batcher's plan does.
func addColumn(name string) func(*schema.Doc) (*schema.Doc, bool) {
	return func(d *schema.Doc) (*schema.Doc, bool) {
		if _, ok := d.Index()["/"+name]; ok {
			return d, false
		}
		next := d.Clone()
		next.Columns["p_"+name] = &schema.Col{Path: "/" + name, Type: "string", Origin: schema.Inferred}
		return next, true
	}
}

// Many instances proposing the same column at once change the schema
// once; each ends with the one document.
func TestRegistryConcurrentProposalsWriteOnce(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 16
	regs := make([]*schema.Registry, n)
	for i := range regs {
		r, err := schema.OpenRegistry(ctx, js, "events", 1, 5*time.Second)
		if err != nil {
			t.Fatalf("open registry: %v", err)
		}
		regs[i] = r
	}
	snaps := make([]schema.Snapshot, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, r := range regs {
		wg.Go(func() { snaps[i], errs[i] = r.Update(ctx, addColumn("coupon")) })
	}
	wg.Wait()
	wrote := 0
	for i := range n {
		if snaps[i].Wrote {
			wrote++
		}
		if errs[i] != nil {
			t.Fatalf("instance %d: %v", i, errs[i])
		}
		if snaps[i].Rev != 1 || len(snaps[i].Doc.Columns) != 1 || snaps[i].Doc.Columns["p_coupon"] == nil {
			t.Fatalf("instance %d ended with revision %d and columns %v, want revision 1 with p_coupon only", i, snaps[i].Rev, snaps[i].Doc.Columns)
		}
	}
	if wrote != 1 {
		t.Fatalf("%d instances say they wrote the change, want 1", wrote)
	}
	// A second, different column is one more revision.
	s, err := regs[3].Update(ctx, addColumn("plan"))
	if err != nil || s.Rev != 2 || len(s.Doc.Columns) != 2 {
		t.Fatalf("second column: revision %d, %d columns, err %v; want revision 2, 2 columns", s.Rev, len(s.Doc.Columns), err)
	}
}

// A watching registry sees another instance's change.
func TestRegistryWatchSeesChanges(t *testing.T) {
	js := natstest.JetStream(t, natstest.Start(t).ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watcher, err := schema.OpenRegistry(ctx, js, "events", 1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- watcher.Watch(wctx) }()
	writer, err := schema.OpenRegistry(ctx, js, "events", 1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want, err := writer.Update(ctx, addColumn("plan"))
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for watcher.Current().Rev != want.Rev {
		select {
		case <-ctx.Done():
			t.Fatalf("watcher at revision %d, want %d", watcher.Current().Rev, want.Rev)
		case <-tick.C:
		}
	}
	if c := watcher.Current().Doc.Columns["p_plan"]; c == nil || c.Path != "/plan" {
		t.Fatalf("watcher's document lacks p_plan: %v", watcher.Current().Doc.Columns)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("watch ended with %v", err)
	}
}
