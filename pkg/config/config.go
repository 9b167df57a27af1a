// Package config loads a service's configuration: defaults from the code,
// then a YAML file, then SURGE_* environment variables, then flags.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment variable Surge reads.
const EnvPrefix = "SURGE_"

// Options is what the command line asked for besides the configuration.
type Options struct {
	// ValidateOnly is set by --validate: check the configuration and exit.
	ValidateOnly bool
	// PrintConfig is set by --print-config: print the effective configuration.
	PrintConfig bool
}

// Load fills cfg, a pointer to a struct already holding the defaults, from
// the file named by --config (or SURGE_CONFIG), then the environment, and
// parses the command line of the named program. Struct fields name their
// variable with an `env` tag; nested structs join their tags with '_', so
// NATS.URL with tags "NATS" and "URL" reads SURGE_NATS_URL.
func Load(name string, args []string, cfg any, stderr io.Writer) (Options, error) {
	var opts Options
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", os.Getenv(EnvPrefix+"CONFIG"), "YAML configuration `file` (env "+EnvPrefix+"CONFIG)")
	fs.BoolVar(&opts.ValidateOnly, "validate", false, "check the configuration, print the problems and exit")
	fs.BoolVar(&opts.PrintConfig, "print-config", false, "print the effective configuration as YAML and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n\nSettings come from defaults, the YAML file, then %s* variables:\n", name, EnvPrefix)
		for _, v := range EnvVars(cfg) {
			fmt.Fprintf(stderr, "  %s\n", v)
		}
		fmt.Fprintln(stderr, "\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if *file != "" {
		data, err := os.ReadFile(*file)
		if err != nil {
			return opts, fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
			return opts, fmt.Errorf("parse config %s: %w", *file, err)
		}
	}
	if err := ApplyEnv(cfg, os.LookupEnv); err != nil {
		return opts, err
	}
	return opts, nil
}

// ApplyEnv sets the fields of cfg whose variables lookup finds.
func ApplyEnv(cfg any, lookup func(string) (string, bool)) error {
	var errs []error
	walk(reflect.ValueOf(cfg).Elem(), EnvPrefix, func(name string, v reflect.Value) {
		s, ok := lookup(name)
		if !ok {
			return
		}
		if err := set(v, s); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	})
	return errors.Join(errs...)
}

// EnvVars lists the variables cfg reads, with their current values.
func EnvVars(cfg any) []string {
	var out []string
	walk(reflect.ValueOf(cfg).Elem(), EnvPrefix, func(name string, v reflect.Value) {
		out = append(out, fmt.Sprintf("%s=%v", name, v.Interface()))
	})
	return out
}

func walk(v reflect.Value, prefix string, visit func(string, reflect.Value)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			// An embedded struct (yaml ",inline") shares its parent's prefix.
			walk(v.Field(i), prefix, visit)
			continue
		}
		tag := f.Tag.Get("env")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(time.Time{}) {
			walk(fv, prefix+tag+"_", visit)
			continue
		}
		visit(prefix+tag, fv)
	}
}

func set(v reflect.Value, s string) error {
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, v.Type().Bits())
		if err != nil {
			return err
		}
		v.SetUint(n)
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		v.SetFloat(f)
	case reflect.Slice:
		parts := splitList(s)
		out := reflect.MakeSlice(v.Type(), len(parts), len(parts))
		for i, p := range parts {
			if err := set(out.Index(i), p); err != nil {
				return err
			}
		}
		v.Set(out)
	case reflect.Map:
		// key=value pairs separated by commas, for string maps.
		if v.Type().Key().Kind() != reflect.String || v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("unsupported map type %s", v.Type())
		}
		m := reflect.MakeMap(v.Type())
		for _, p := range splitList(s) {
			k, val, ok := strings.Cut(p, "=")
			if !ok {
				return fmt.Errorf("want key=value, got %q", p)
			}
			m.SetMapIndex(reflect.ValueOf(strings.TrimSpace(k)), reflect.ValueOf(strings.TrimSpace(val)))
		}
		v.Set(m)
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Section prefixes every error of err with the section name, so a joined
// Validate() error says where each problem is. Each error keeps its chain:
// errors.Is and errors.As see through Section.
func Section(name string, err error) error {
	if err == nil {
		return nil
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return fmt.Errorf("%s: %w", name, err)
	}
	var out []error
	for _, e := range joined.Unwrap() {
		out = append(out, Section(name, e))
	}
	return errors.Join(out...)
}
