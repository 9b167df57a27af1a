package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type inner struct {
	URL     string        `yaml:"url" env:"URL"`
	Timeout time.Duration `yaml:"timeout" env:"TIMEOUT"`
}

type sample struct {
	NATS   inner             `yaml:"nats" env:"NATS"`
	Shards int               `yaml:"shards" env:"SHARDS"`
	Owned  []int             `yaml:"owned" env:"OWNED"`
	Keys   map[string]string `yaml:"keys" env:"KEYS"`
	Debug  bool              `yaml:"debug" env:"DEBUG"`
	Secret string            `yaml:"-"`
}

func TestApplyEnv(t *testing.T) {
	env := map[string]string{
		"SURGE_NATS_URL":     "nats://a:1,nats://b:2",
		"SURGE_NATS_TIMEOUT": "1m30s",
		"SURGE_SHARDS":       "16",
		"SURGE_OWNED":        "1, 3,5",
		"SURGE_KEYS":         "k1=acme, k2=globex",
		"SURGE_DEBUG":        "true",
	}
	cfg := sample{Shards: 8}
	require.NoError(t, ApplyEnv(&cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	require.Equal(t, sample{
		NATS:   inner{URL: "nats://a:1,nats://b:2", Timeout: 90 * time.Second},
		Shards: 16, Owned: []int{1, 3, 5}, Keys: map[string]string{"k1": "acme", "k2": "globex"}, Debug: true,
	}, cfg)
}

func TestApplyEnvReportsEveryBadValue(t *testing.T) {
	env := map[string]string{"SURGE_SHARDS": "many", "SURGE_NATS_TIMEOUT": "soon", "SURGE_KEYS": "novalue"}
	cfg := sample{}
	err := ApplyEnv(&cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	require.Error(t, err)
	for _, name := range []string{"SURGE_SHARDS", "SURGE_NATS_TIMEOUT", "SURGE_KEYS"} {
		require.Contains(t, err.Error(), name)
	}
}

func TestLoadLayersFileThenEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(file, []byte("nats:\n  url: nats://file:4\n  timeout: 5s\nshards: 4\n"), 0o644))
	t.Setenv("SURGE_SHARDS", "12")
	cfg := sample{Shards: 8, NATS: inner{URL: "nats://default"}}
	opts, err := Load("svc", []string{"--config", file, "--validate"}, &cfg, &bytes.Buffer{})
	require.NoError(t, err)
	require.True(t, opts.ValidateOnly)
	require.Equal(t, "nats://file:4", cfg.NATS.URL, "file overrides default")
	require.Equal(t, 5*time.Second, cfg.NATS.Timeout)
	require.Equal(t, 12, cfg.Shards, "environment overrides file")
}

func TestLoadRejectsUnknownFileFields(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(file, []byte("shardz: 4\n"), 0o644))
	_, err := Load("svc", []string{"--config", file}, &sample{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "shardz")
}

func TestLoadRejectsStrayArguments(t *testing.T) {
	_, err := Load("svc", []string{"extra"}, &sample{}, &bytes.Buffer{})
	require.ErrorContains(t, err, "unexpected arguments: extra")
}

func TestEnvVarsListsEveryVariable(t *testing.T) {
	require.Equal(t, []string{
		"SURGE_NATS_URL=x", "SURGE_NATS_TIMEOUT=1s", "SURGE_SHARDS=2", "SURGE_OWNED=[]", "SURGE_KEYS=map[]", "SURGE_DEBUG=false",
	}, EnvVars(&sample{NATS: inner{URL: "x", Timeout: time.Second}, Shards: 2}))
}

func TestSectionPrefixesEachProblem(t *testing.T) {
	err := Section("nats", errors.Join(errors.New("url is required"), errors.New("timeout must be positive")))
	require.EqualError(t, err, "nats: url is required\nnats: timeout must be positive")
	require.NoError(t, Section("nats", nil))
}

func TestSectionKeepsErrorChains(t *testing.T) {
	errURL := errors.New("url is required")
	inner := Section("nats", errors.Join(errURL, fmt.Errorf("port: %w", strconv.ErrRange)))
	err := Section("sink", errors.Join(inner, errors.New("shards: bad")))
	require.ErrorIs(t, err, errURL)
	require.ErrorIs(t, err, strconv.ErrRange)
	require.Equal(t, "sink: nats: url is required\nsink: nats: port: value out of range\nsink: shards: bad", err.Error())
}

func TestEmbeddedStructSharesPrefix(t *testing.T) {
	type Inner struct {
		Shards int `env:"SHARDS"`
	}
	type Cfg struct {
		Inner `yaml:",inline"`
		Name  string `env:"NAME"`
	}
	var c Cfg
	env := map[string]string{"SURGE_SHARDS": "4", "SURGE_NAME": "x"}
	require.NoError(t, ApplyEnv(&c, func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	require.Equal(t, 4, c.Shards)
	require.Equal(t, "x", c.Name)
}
