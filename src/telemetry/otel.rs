//! OpenTelemetry traces over OTLP (gRPC or HTTP/protobuf) with a batch processor, and W3C
//! trace-context + baggage propagation.
//!
//! Standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! (tracing is off without one), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` default or
//! `http/protobuf`, chosen here), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`(+`_ARG`) (read by the SDK) and
//! `OTEL_SDK_DISABLED` (honoured here).
use std::collections::HashMap;

use opentelemetry::{
    global,
    propagation::{Extractor, TextMapCompositePropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::{
    Resource,
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::SdkTracerProvider,
};

/// Flushes and shuts the exporter down when dropped (once, at exit).
#[derive(Debug, Default)]
pub struct TracingGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace export shutdown: {e}");
        }
    }
}

/// Why tracing is on or off, said once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TracingState {
    Exporting { endpoint: String, protocol: String },
    Disabled(&'static str),
}

/// Installs the W3C propagators (always) and builds the OTLP pipeline when an endpoint is
/// configured in `env`.
pub fn pipeline(env: &HashMap<String, String>) -> (Option<SdkTracerProvider>, TracingState) {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    if env
        .get("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return (None, TracingState::Disabled("OTEL_SDK_DISABLED=true"));
    }
    let Some(endpoint) = env
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.is_empty())
    else {
        return (
            None,
            TracingState::Disabled("no OTEL_EXPORTER_OTLP_ENDPOINT"),
        );
    };
    let protocol = env
        .get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .cloned()
        .unwrap_or_else(|| "grpc".into());
    let exporter = match protocol.as_str() {
        "http/protobuf" => SpanExporter::builder().with_http().build(),
        _ => SpanExporter::builder().with_tonic().build(),
    };
    let exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            eprintln!("OTLP exporter for {endpoint}: {e}; tracing disabled");
            return (None, TracingState::Disabled("exporter could not be built"));
        }
    };
    let mut resource = Resource::builder();
    if !env.contains_key("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("jisu");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    global::set_tracer_provider(provider.clone());
    let state = TracingState::Exporting {
        endpoint: endpoint.clone(),
        protocol,
    };
    (Some(provider), state)
}

/// The `tracing` layer that turns spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("jisu"))
}

pub fn guard(provider: Option<SdkTracerProvider>) -> TracingGuard {
    TracingGuard { provider }
}

/// Reads W3C headers from gRPC metadata (HTTP/2 headers).
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The remote parent context carried by a request's headers.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}
