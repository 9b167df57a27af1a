package ingest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/service"
)

func TestDefaultConfigIsValid(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HTTP.Addr = "nope"
	cfg.HTTP.ReadTimeout = 0
	cfg.Ingest.MaxEvents = 0
	cfg.Ingest.MaxBodyBytes = 16 << 20
	cfg.Ingest.SegmentMaxBodyBytes = 8 << 20
	cfg.Ingest.MaxInFlight = -1
	cfg.Ingest.APIKeys = map[string]string{"k1": "ok", "k2": "not ok!", "": "x"}
	cfg.NATS.URL = ""
	cfg.Log.Format = "xml"
	err := cfg.Validate()
	require.Error(t, err)
	require.Equal(t, []string{
		"nats: url is required",
		`log: format must be json or console, got "xml"`,
		"http: addr: address nope: missing port in address",
		"http: read_timeout must be positive, got 0s",
		"ingest: segment_max_body_bytes 8388608 is below max_body_bytes 16777216",
		"ingest: max_events must be at least 1, got 0",
		"ingest: max_in_flight must be at least 1, got -1",
		"ingest: api_keys: key 1 is empty",
		`ingest: api_keys: tenant "not ok!" of key 3 must be 1 to 64 letters, digits, '_' or '-'`,
		"ingest: max_body_bytes 16777216 exceeds streams.max_msg_size 8388608",
	}, strings.Split(err.Error(), "\n"))
	require.NotContains(t, err.Error(), "k2", "keys are secrets")
}

func TestValidateTenantNames(t *testing.T) {
	for _, tt := range []struct {
		tenant string
		ok     bool
	}{
		{"default", true},
		{"Acme_01-x", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"a.b", false},
		{"a b", false},
		{"ü", false},
	} {
		t.Run(tt.tenant, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Ingest.DefaultTenant = tt.tenant
			err := cfg.Validate()
			require.Equal(t, tt.ok, err == nil)
			if !tt.ok {
				require.EqualError(t, err, fmt.Sprintf("ingest: default_tenant %q must be 1 to 64 letters, digits, '_' or '-'", tt.tenant))
			}
			cfg = DefaultConfig()
			cfg.Ingest.APIKeys = map[string]string{"key": tt.tenant}
			require.Equal(t, tt.ok, cfg.Validate() == nil)
		})
	}
}

func TestValidateWriteTimeoutCoversPublish(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HTTP.WriteTimeout = 5 * time.Second
	require.EqualError(t, cfg.Validate(), "http: write_timeout 5s must exceed ingest.publish_timeout 5s")
}

// mainValidate runs what cmd/ingest runs, with --validate.
func mainValidate(t *testing.T) (int, string, string) {
	t.Helper()
	cfg := DefaultConfig()
	var stdout, stderr bytes.Buffer
	code := service.MainArgs("ingest", []string{"--validate"}, &stdout, &stderr, &cfg, func(context.Context, service.Deps) error {
		t.Fatal("--validate must not run the service")
		return nil
	})
	return code, stdout.String(), stderr.String()
}

func TestMainValidate(t *testing.T) {
	t.Run("valid", func(t *testing.T) {
		t.Setenv("SURGE_INGEST_API_KEYS", "k1=acme, k2=beta")
		t.Setenv("SURGE_HTTP_ADDR", "127.0.0.1:9999")
		code, stdout, stderr := mainValidate(t)
		require.Equal(t, 0, code, stderr)
		require.Equal(t, "ingest: configuration is valid\n", stdout)
	})
	t.Run("invalid", func(t *testing.T) {
		t.Setenv("SURGE_INGEST_API_KEYS", "k1=bad tenant")
		t.Setenv("SURGE_INGEST_MAX_EVENTS", "0")
		code, stdout, stderr := mainValidate(t)
		require.Equal(t, 2, code)
		require.Empty(t, stdout)
		require.Equal(t, "ingest: invalid configuration:\n"+
			"ingest: max_events must be at least 1, got 0\n"+
			`ingest: api_keys: tenant "bad tenant" of key 1 must be 1 to 64 letters, digits, '_' or '-'`+"\n", stderr)
	})
	t.Run("unparsable variable", func(t *testing.T) {
		t.Setenv("SURGE_INGEST_API_KEYS", "no-equals-sign")
		code, _, stderr := mainValidate(t)
		require.Equal(t, 2, code)
		require.Contains(t, stderr, `SURGE_INGEST_API_KEYS: want key=value, got "no-equals-sign"`)
	})
}

func TestEnvironmentFillsConfig(t *testing.T) {
	t.Setenv("SURGE_INGEST_API_KEYS", "k1=acme,k2=beta")
	t.Setenv("SURGE_HTTP_ADDR", ":9090")
	t.Setenv("SURGE_INGEST_PUBLISH_TIMEOUT", "2s")
	cfg := DefaultConfig()
	var stdout, stderr bytes.Buffer
	code := service.MainArgs("ingest", []string{"--print-config"}, &stdout, &stderr, &cfg, nil)
	require.Equal(t, 0, code, stderr.String())
	require.Equal(t, map[string]string{"k1": "acme", "k2": "beta"}, cfg.Ingest.APIKeys)
	require.Equal(t, ":9090", cfg.HTTP.Addr)
	require.Equal(t, 2*time.Second, cfg.Ingest.PublishTimeout)
}
