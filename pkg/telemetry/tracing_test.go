package telemetry

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// clearOTEL unsets every variable the tests below read.
func clearOTEL(t *testing.T) {
	t.Helper()
	for _, k := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"} {
		t.Setenv(k, "")
	}
}

func TestTracingEnabled(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  map[string]string
		on   bool
		err  string
	}{
		{name: "unset", on: false},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, on: true},
		{name: "traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}, on: true},
		{name: "exporter otlp", env: map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, on: true},
		{name: "exporter none", env: map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, on: false},
		{name: "sdk disabled", env: map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, on: false},
		{name: "bad exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, err: `OTEL_TRACES_EXPORTER "zipkin" is not supported; use otlp or none`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clearOTEL(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			on, err := TracingEnabled()
			if tt.err != "" {
				require.EqualError(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.on, on)
		})
	}
}

func TestSamplerFromEnv(t *testing.T) {
	for _, tt := range []struct {
		sampler, arg string
		want         string // the sampler's Description
		err          string
	}{
		{want: "ParentBased{root:TraceIDRatioBased{0.01},remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"},
		{sampler: "always_on", want: "AlwaysOnSampler"},
		{sampler: "always_off", want: "AlwaysOffSampler"},
		{sampler: "traceidratio", arg: "0.5", want: "TraceIDRatioBased{0.5}"},
		{sampler: "traceidratio", want: "TraceIDRatioBased{1}"},
		{sampler: "parentbased_traceidratio", arg: "0.25", want: "ParentBased{root:TraceIDRatioBased{0.25},remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler,localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"},
		{sampler: "parentbased_always_on", want: sdktrace.ParentBased(sdktrace.AlwaysSample()).Description()},
		{sampler: "parentbased_always_off", want: sdktrace.ParentBased(sdktrace.NeverSample()).Description()},
		{sampler: "traceidratio", arg: "2", err: `OTEL_TRACES_SAMPLER_ARG must be a ratio in [0, 1], got "2"`},
		{sampler: "jaeger_remote", err: `OTEL_TRACES_SAMPLER "jaeger_remote" is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio`},
	} {
		t.Run(tt.sampler+"/"+tt.arg, func(t *testing.T) {
			clearOTEL(t)
			t.Setenv("OTEL_TRACES_SAMPLER", tt.sampler)
			t.Setenv("OTEL_TRACES_SAMPLER_ARG", tt.arg)
			s, err := SamplerFromEnv()
			if tt.err != "" {
				require.EqualError(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, s.Description())
		})
	}
}

func TestSetupTracingOffWhenUnset(t *testing.T) {
	clearOTEL(t)
	tp, shutdown, err := SetupTracing(context.Background(), "surge-test")
	require.NoError(t, err)
	require.IsType(t, noop.TracerProvider{}, tp)
	require.NoError(t, shutdown(context.Background()))
}

func TestSetupTracingRejectsUnknownProtocol(t *testing.T) {
	clearOTEL(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
	_, _, err := SetupTracing(context.Background(), "surge-test")
	require.EqualError(t, err, `OTEL_EXPORTER_OTLP_PROTOCOL "http/json" is not supported; use http/protobuf or grpc`)
}

func TestServiceResourceName(t *testing.T) {
	clearOTEL(t)
	res, err := ServiceResource(context.Background(), "surge-ingest")
	require.NoError(t, err)
	v, ok := res.Set().Value("service.name")
	require.True(t, ok)
	require.Equal(t, "surge-ingest", v.AsString())

	t.Setenv("OTEL_SERVICE_NAME", "edge-ingest")
	res, err = ServiceResource(context.Background(), "surge-ingest")
	require.NoError(t, err)
	v, _ = res.Set().Value("service.name")
	require.Equal(t, "edge-ingest", v.AsString(), "OTEL_SERVICE_NAME wins")
}

func TestTraceFieldsAndHeaders(t *testing.T) {
	require.Nil(t, TraceFields(context.Background()))

	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { require.NoError(t, tp.Shutdown(context.Background())) }()
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	sc := span.SpanContext()
	fields := TraceFields(ctx)
	require.Len(t, fields, 2)
	require.Equal(t, "trace_id", fields[0].Key)
	require.Equal(t, sc.TraceID().String(), fields[0].String)
	require.Equal(t, "span_id", fields[1].Key)
	require.Equal(t, sc.SpanID().String(), fields[1].String)

	clearOTEL(t)
	_, _, err := SetupTracing(context.Background(), "x") // installs the propagator
	require.NoError(t, err)
	h := nats.Header{}
	Inject(ctx, h)
	require.Equal(t, "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-01", h.Get("traceparent"))
	got := trace.SpanContextFromContext(Extract(context.Background(), h))
	require.Equal(t, sc.TraceID(), got.TraceID())
	require.True(t, got.IsRemote())
}
