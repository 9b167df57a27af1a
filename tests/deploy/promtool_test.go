package deploy

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/surge-events/surge/pkg/testkit/gotools"
)

// The shipped Prometheus files and promtool's unit tests of the alerts.
const (
	prometheusFile = "deployments/prometheus/prometheus.yml"
	alertTestsFile = "deployments/prometheus/alerts.test.yml"
)

// promtool runs Prometheus' promtool with args in dir and returns its
// output and whether it exited 0.
func promtool(t *testing.T, dir string, args ...string) (string, bool) {
	t.Helper()
	bin, err := gotools.Promtool.Path(t.Context())
	require.NoError(t, err)
	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		require.NoError(t, err, "run promtool")
	}
	return out.String(), err == nil
}

// TestPromtoolCheck runs `promtool check rules` on the alerts and `promtool
// check config` on the compose Prometheus' configuration, with its
// rule_files pointed at the alerts (the path it has in the container).
func TestPromtoolCheck(t *testing.T) {
	// --lint-fatal: two rules of one name and the same labels fail too.
	rules := fmt.Sprintf("SUCCESS: %d rules found", len(loadRules(t)))
	out, ok := promtool(t, root, "check", "rules", "--lint-fatal", alertsFile)
	require.True(t, ok, out)
	require.Equal(t, "Checking "+alertsFile+"\n  "+rules+"\n\n", out)

	conf, err := os.ReadFile(filepath.Join(root, prometheusFile))
	require.NoError(t, err)
	abs, err := filepath.Abs(filepath.Join(root, alertsFile))
	require.NoError(t, err)
	const inContainer = "/etc/prometheus/alerts.yml"
	require.Equal(t, 1, strings.Count(string(conf), inContainer), "%s loads %s", prometheusFile, inContainer)
	tmp := filepath.Join(t.TempDir(), "prometheus.yml")
	require.NoError(t, os.WriteFile(tmp, []byte(strings.Replace(string(conf), inContainer, abs, 1)), 0o644))
	out, ok = promtool(t, root, "check", "config", "--lint-fatal", tmp)
	require.True(t, ok, out)
	require.Contains(t, out, "SUCCESS: 1 rule files found", out)
	require.Contains(t, out, rules, out)
}

// alertTests is the part of a promtool unit test file this test reads.
type alertTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name  string `yaml:"name"`
		Cases []struct {
			EvalTime  string           `yaml:"eval_time"`
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestPromtoolAlertTests runs the alerts' unit tests with `promtool test
// rules`, checks every alert has a case where it fires and, in the same
// test, an earlier evaluation where it does not yet (its `for` not over,
// or its counter not moved yet), and checks the tests notice a rule that
// fires too early: with every `for` a minute shorter, each alert that has
// one fails.
func TestPromtoolAlertTests(t *testing.T) {
	out, ok := promtool(t, root, "test", "rules", alertTestsFile)
	require.True(t, ok, out)
	require.Equal(t, "Processing test file: "+alertTestsFile+"\n  SUCCESS\n\n", out)

	data, err := os.ReadFile(filepath.Join(root, alertTestsFile))
	require.NoError(t, err)
	var tests alertTests
	require.NoError(t, yaml.Unmarshal(data, &tests))
	require.Equal(t, []string{filepath.Base(alertsFile)}, tests.RuleFiles)
	fires, silentBefore := map[string]bool{}, map[string]bool{}
	for _, g := range tests.Tests {
		silentAt := map[string]time.Duration{}
		for _, c := range g.Cases {
			at, err := time.ParseDuration(c.EvalTime)
			require.NoError(t, err, "%s: eval_time", g.Name)
			if len(c.ExpAlerts) == 0 {
				if _, seen := silentAt[c.Alertname]; !seen {
					silentAt[c.Alertname] = at
				}
				continue
			}
			fires[c.Alertname] = true
			if first, seen := silentAt[c.Alertname]; seen && first < at {
				silentBefore[c.Alertname] = true
			}
		}
	}
	require.Equal(t, alertNames, slices.Sorted(maps.Keys(fires)), "alerts with a firing case")
	require.Equal(t, alertNames, slices.Sorted(maps.Keys(silentBefore)), "alerts silent before they fire, in the same test")

	// Every `for` a minute shorter: each alert with one fires early.
	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join(root, alertsFile))
	require.NoError(t, err)
	forLine := regexp.MustCompile(`(?m)^(\s+for: )(\d+)m$`)
	shorter := forLine.ReplaceAllFunc(rules, func(m []byte) []byte {
		sub := forLine.FindSubmatch(m)
		n, err := strconv.Atoi(string(sub[2]))
		require.NoError(t, err)
		return fmt.Appendf(slices.Clone(sub[1]), "%dm", n-1)
	})
	require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(alertsFile)), shorter, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, filepath.Base(alertTestsFile)), data, 0o644))
	out, ok = promtool(t, dir, "test", "rules", filepath.Base(alertTestsFile))
	require.False(t, ok, out)
	var withFor []string
	for _, r := range loadRules(t) {
		if r.For > 0 && !slices.Contains(withFor, r.Alert) {
			withFor = append(withFor, r.Alert)
		}
	}
	failed := map[string]bool{}
	for _, m := range regexp.MustCompile(`alertname: (\w+),`).FindAllStringSubmatch(out, -1) {
		failed[m[1]] = true
	}
	require.Equal(t, slices.Sorted(slices.Values(withFor)), slices.Sorted(maps.Keys(failed)), out)
}
