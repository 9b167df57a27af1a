package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/erasure"
	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestEraseCommand(t *testing.T) {
	ns := natstest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runErase(ctx, append([]string{"--nats", ns.ClientURL(), "--dir", t.TempDir()}, args...), &out)
		return out.String(), err
	}

	_, err := run("--tenant", "acme")
	require.ErrorContains(t, err, "no user given")
	_, err = run("--tenant", "acme", "--user", "u1", "--before", "yesterday")
	require.ErrorContains(t, err, "--before")

	file := filepath.Join(t.TempDir(), "users.txt")
	require.NoError(t, os.WriteFile(file, []byte("u2\n\nu3\nu1\n"), 0o600))
	out, err := run("--tenant", "acme", "--user", "u1", "--users-file", file, "--before", "2026-01-01T00:00:00Z")
	require.NoError(t, err)
	m := regexp.MustCompile(`erasure request (er-[0-9a-z]+): 3 users of tenant acme suppressed`).FindStringSubmatch(out)
	require.NotNil(t, m, out)

	out, err = run("status")
	require.NoError(t, err)
	require.Regexp(t, `(?m)^REQUEST\s+REQUESTED\s+TENANT\s+USERS\s+BEFORE\s+STATE`, out)
	require.Regexp(t, m[1]+`\s+\S+\s+acme\s+3\s+2026-01-01T00:00:00Z\s+requested\s+0\s+0\s+-`, out)

	out, err = run("status", m[1])
	require.NoError(t, err)
	require.Contains(t, out, "deletion batch: -")

	// The users are on the suppression list, hashed, with the cut.
	w := erasure.NewWatcher(natstest.JetStream(t, ns.ClientURL()), 1, nil)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(wctx) }()
	defer func() { stop(); <-done }()
	require.NoError(t, w.Wait(ctx))
	_, ok := w.Suppressed("acme", "u2", time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC))
	require.True(t, ok)
	_, ok = w.Suppressed("acme", "u2", time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	require.False(t, ok, "after the cut")
	_, ok = w.Suppressed("beta", "u2", time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC))
	require.False(t, ok, "another tenant")
	require.Equal(t, 3, w.Len())
}
