package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/testkit/natsserver/natstest"
)

func TestTenantsCommand(t *testing.T) {
	ns := natstest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runTenants(ctx, append([]string{"--nats", ns.ClientURL(), "--dir", t.TempDir()}, args...), &out)
		return out.String(), err
	}

	out, err := run("list")
	require.NoError(t, err)
	require.Equal(t, "no limits set: every tenant has the configured default (ingest.quota)\n", out)

	_, err = run("set", "acme", "--events-per-second", "2000", "--burst", "4000")
	require.NoError(t, err)
	_, err = run("set", "--default", "--events-per-second", "500", "--bytes-per-second", "1000000")
	require.NoError(t, err)
	out, err = run("list")
	require.NoError(t, err)
	require.Equal(t, ""+
		"TENANT     EVENTS/S  BURST  BYTES/S  BYTES BURST\n"+
		"(default)  500       -      1000000  -\n"+
		"acme       2000      4000   -        -\n", out)

	_, err = run("unset", "acme")
	require.NoError(t, err)
	out, err = run("list")
	require.NoError(t, err)
	require.NotContains(t, out, "acme")

	_, err = run("set", "acme", "--burst", "5")
	require.ErrorContains(t, err, "burst needs events_per_second")
	_, err = run("set", "a.b")
	require.ErrorContains(t, err, "must be 1 to 64 letters")
	_, err = run("set")
	require.ErrorContains(t, err, "usage: surge tenants set TENANT | set --default")
}
