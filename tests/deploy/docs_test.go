package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/surge-events/surge/pkg/batch"
	"github.com/surge-events/surge/pkg/config"
	"github.com/surge-events/surge/pkg/schema"
	"github.com/surge-events/surge/services/batcher"
	"github.com/surge-events/surge/services/sink"
)

// The headers of the documentation tables these tests hold to the code.
const (
	baseColumnsHeader    = "| base column | type | default | since | holds |"
	schemaSettingsHeader = "| setting (YAML `schema:` / environment) | default |"
)

// readDoc is the text of a file of the repository.
func readDoc(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, path))
	require.NoError(t, err)
	return string(data)
}

// docTable is the rows of the Markdown table in doc whose header line
// starts with header, each row its cells. It fails the test unless exactly
// one table matches.
func docTable(t *testing.T, doc, name, header string) [][]string {
	t.Helper()
	lines := strings.Split(doc, "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, header) {
			require.Equal(t, -1, start, "%s: two tables start with %q", name, header)
			start = i
		}
	}
	require.NotEqual(t, -1, start, "%s: no table starts with %q", name, header)
	var rows [][]string
	for _, l := range lines[start+2:] { // after the header and its |---| line
		if !strings.HasPrefix(l, "|") {
			break
		}
		// An escaped \| stays in its cell.
		cells := strings.Split(strings.ReplaceAll(strings.Trim(l, "|"), `\|`, "\x00"), "|")
		for i, c := range cells {
			cells[i] = strings.ReplaceAll(strings.TrimSpace(c), "\x00", "|")
		}
		rows = append(rows, cells)
	}
	return rows
}

// The documentation files that hold the tables these tests check.
var (
	baseColumnsDoc  = filepath.Join("docs", "architecture.md")
	typedColumnsDoc = filepath.Join("docs", "TYPED-COLUMNS.md")
	alertsDoc       = filepath.Join("docs", "observability.md")
)

// The table of base columns (docs/architecture.md) is batch.BaseColumns, in
// order, with the same types, defaults and versions.
func TestDocsBaseColumns(t *testing.T) {
	doc := baseColumnsDoc
	rows := docTable(t, readDoc(t, doc), doc, baseColumnsHeader)
	var want, got []string
	for _, c := range batch.BaseColumns {
		want = append(want, fmt.Sprintf("%s | %s | %s | %d", c.Name, c.Type, c.Default, c.Since))
	}
	for _, r := range rows {
		require.Len(t, r, 5, "%s base column row %q: name, type, default, since, holds", doc, r)
		require.NotEmpty(t, r[4], "%s: base column %s says what it holds", doc, r[0])
		got = append(got, strings.Join([]string{unquote(r[0]), unquote(r[1]), unquote(r[2]), r[3]}, " | "))
	}
	require.Equal(t, want, got, "%s: the base columns must be batch.BaseColumns (pkg/batch/columns.go)", doc)
	last := 0
	for _, c := range batch.BaseColumns {
		last = max(last, c.Since)
	}
	require.Equal(t, batch.TableVersion, last, "the table version is the highest Since")
}

// schemaSetting is one setting of schema.Config with an environment
// variable: its YAML key, variable and default as the docs write it.
type schemaSetting struct {
	yaml, env, def string
	list           []string // the default of a list setting
}

// schemaSettings lists the settings of schema.Config that have a variable,
// with the batcher's defaults.
func schemaSettings(t *testing.T) []schemaSetting {
	t.Helper()
	cfg := batcher.DefaultConfig().Schema
	v := reflect.ValueOf(cfg)
	var out []schemaSetting
	for i := range v.NumField() {
		f := v.Type().Field(i)
		env := f.Tag.Get("env")
		if env == "" {
			continue
		}
		s := schemaSetting{yaml: strings.Split(f.Tag.Get("yaml"), ",")[0], env: "SURGE_SCHEMA_" + env}
		switch fv := v.Field(i); fv.Kind() {
		case reflect.Slice:
			s.list = fv.Interface().([]string)
			if len(s.list) == 0 {
				s.def = "none"
			}
		case reflect.Int:
			s.def = strconv.FormatInt(fv.Int(), 10)
		default:
			s.def = fv.String()
			if s.def == "" {
				s.def = "none"
			}
		}
		out = append(out, s)
	}
	return out
}

// The typed columns' settings table (docs/TYPED-COLUMNS.md) names every
// schema variable with its YAML key and default, as the code has them; the
// batcher and the sink read the same variables.
func TestDocsSchemaSettings(t *testing.T) {
	settings := schemaSettings(t)
	var names []string
	for _, s := range settings {
		names = append(names, s.env)
	}
	schemaVars := func(cfg any) []string {
		var out []string
		for _, v := range envNames(cfg) {
			if strings.HasPrefix(v, "SURGE_SCHEMA_") {
				out = append(out, v)
			}
		}
		return out
	}
	require.Equal(t, names, schemaVars(&batcher.Config{}), "the batcher's schema variables")
	require.Equal(t, names, schemaVars(&sink.Config{}), "the sink reads the batcher's schema variables")
	require.Equal(t, schema.DefaultConfig(), sink.DefaultConfig().Schema, "the sink's schema defaults")
	require.Equal(t, schema.DefaultConfig(), batcher.DefaultConfig().Schema, "the batcher's schema defaults")
	// The names the docs use are the names config.Load reads.
	for _, v := range config.EnvVars(&batcher.Config{}) {
		name, _, _ := strings.Cut(v, "=")
		if strings.HasPrefix(name, "SURGE_SCHEMA_") {
			require.Contains(t, names, name)
		}
	}

	for _, doc := range []string{typedColumnsDoc} {
		rows := docTable(t, readDoc(t, doc), doc, schemaSettingsHeader)
		byEnv := make(map[string][]string)
		for _, r := range rows {
			key, env, ok := strings.Cut(unquote(r[0]), "` / `")
			if !ok {
				continue // a setting without a variable
			}
			require.Len(t, r, 3, "%s: row %q", doc, r)
			byEnv[env] = []string{key, r[1]}
		}
		for _, s := range settings {
			row, ok := byEnv[s.env]
			require.True(t, ok, "%s: no row for %s", doc, s.env)
			require.Equal(t, s.yaml, row[0], "%s: the YAML key of %s", doc, s.env)
			switch {
			case s.def != "":
				require.Equal(t, s.def, unquote(row[1]), "%s: the default of %s", doc, s.env)
			default:
				for _, d := range s.list {
					require.Contains(t, row[1], "`"+d+"`", "%s: the default of %s", doc, s.env)
				}
			}
		}
		require.Len(t, byEnv, len(settings), "%s: rows for variables the code does not read: %v", doc,
			slices.Sorted(func(yield func(string) bool) {
				for env := range byEnv {
					if !slices.Contains(names, env) && !yield(env) {
						return
					}
				}
			}))
	}
}

// unquote is a table cell without the backticks around it.
func unquote(cell string) string {
	return strings.TrimSuffix(strings.TrimPrefix(cell, "`"), "`")
}

// The alert table (docs/observability.md) has one row per alert of
// alerts.yml, and each row's severity names every severity its rules carry.
func TestDocsAlerts(t *testing.T) {
	severities := make(map[string][]string)
	for _, r := range loadRules(t) {
		if !slices.Contains(severities[r.Alert], r.Labels["severity"]) {
			severities[r.Alert] = append(severities[r.Alert], r.Labels["severity"])
		}
	}
	rows := docTable(t, readDoc(t, alertsDoc), alertsDoc, "| alert | severity |")
	var names []string
	for _, r := range rows {
		require.Len(t, r, 4, "%s: alert row %q: alert, severity, what it means, what to do", alertsDoc, r)
		name := unquote(r[0])
		names = append(names, name)
		for _, sev := range severities[name] {
			require.Contains(t, r[1], sev, "%s: the severity of %s", alertsDoc, name)
		}
		require.NotEmpty(t, r[2], "%s: what %s means", alertsDoc, name)
		require.NotEmpty(t, r[3], "%s: what to do on %s", alertsDoc, name)
	}
	slices.Sort(names)
	require.Equal(t, alertNames, names, "%s: one row per alert of %s", alertsDoc, alertsFile)
}
