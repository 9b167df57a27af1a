package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// DefaultSampleRatio is the share of new traces sampled when
// OTEL_TRACES_SAMPLER is unset: at 100k events/s, tracing every request
// would cost more than the work it describes.
const DefaultSampleRatio = 0.01

// DefaultSampler is the sampler of SetupTracing when OTEL_TRACES_SAMPLER is
// unset: a request that arrives with a trace context follows its sampled
// flag; a new trace is sampled at DefaultSampleRatio.
func DefaultSampler() sdktrace.Sampler {
	return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(DefaultSampleRatio))
}

// SamplerFromEnv reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG as
// the OpenTelemetry specification defines them; DefaultSampler when unset.
// Unlike the SDK, which falls back silently, it reports a bad value.
func SamplerFromEnv() (sdktrace.Sampler, error) {
	name := strings.TrimSpace(strings.ToLower(os.Getenv("OTEL_TRACES_SAMPLER")))
	arg := strings.TrimSpace(os.Getenv("OTEL_TRACES_SAMPLER_ARG"))
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil // the specification's default ratio
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return 0, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG must be a ratio in [0, 1], got %q", arg)
		}
		return r, nil
	}
	switch name {
	case "":
		return DefaultSampler(), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio":
		r, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.TraceIDRatioBased(r), nil
	case "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "parentbased_traceidratio":
		r, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), nil
	}
	return nil, fmt.Errorf("OTEL_TRACES_SAMPLER %q is not one of always_on, always_off, traceidratio, "+
		"parentbased_always_on, parentbased_always_off, parentbased_traceidratio", name)
}

// TracingEnabled says whether the standard OTEL_* variables ask for traces:
// an OTLP endpoint is set, or OTEL_TRACES_EXPORTER=otlp, and neither
// OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none turns them off.
func TracingEnabled() (bool, error) {
	if v := os.Getenv("OTEL_SDK_DISABLED"); v != "" {
		disabled, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("OTEL_SDK_DISABLED must be true or false, got %q", v)
		}
		if disabled {
			return false, nil
		}
	}
	switch exp := strings.TrimSpace(strings.ToLower(os.Getenv("OTEL_TRACES_EXPORTER"))); exp {
	case "none":
		return false, nil
	case "otlp":
		return true, nil
	case "":
		return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "", nil
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER %q is not supported; use otlp or none", exp)
	}
}

// SetupTracing builds the tracer provider of a service from the standard
// OTEL_* variables and installs the W3C trace context propagator.
//
// Tracing is off (a no-op provider, nothing exported, nearly free) unless
// TracingEnabled. When on, spans go to an OTLP exporter over HTTP/protobuf
// (the default, port 4318) or gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc, port
// 4317); the exporters read the endpoint, headers, timeout and TLS
// variables themselves. The sampler follows SamplerFromEnv, the resource
// names the service (OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win).
// The returned function flushes and stops the provider.
func SetupTracing(ctx context.Context, service string) (trace.TracerProvider, func(context.Context) error, error) {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	off := func(context.Context) error { return nil }
	on, err := TracingEnabled()
	if err != nil {
		return nil, nil, err
	}
	if !on {
		return noop.NewTracerProvider(), off, nil
	}
	sampler, err := SamplerFromEnv()
	if err != nil {
		return nil, nil, err
	}
	exp, err := newOTLPExporter(ctx)
	if err != nil {
		return nil, nil, err
	}
	res, err := ServiceResource(ctx, service)
	if err != nil {
		return nil, nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res), sdktrace.WithSampler(sampler))
	return tp, tp.Shutdown, nil
}

// ServiceResource describes the process of service: service.name (unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES says otherwise), the SDK,
// and the process.
func ServiceResource(ctx context.Context, service string) (*resource.Resource, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(), // last: the environment overrides the name
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	return res, nil
}

func newOTLPExporter(ctx context.Context) (sdktrace.SpanExporter, error) {
	protocol := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	switch protocol {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q is not supported; use http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	return exp, nil
}
