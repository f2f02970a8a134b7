//! Telemetry: logging (filter and format), Prometheus metrics and the `/metrics` endpoint.
use std::{collections::HashMap, io::IsTerminal};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, LogSettings};

pub mod metrics;
pub mod metrics_endpoint;
pub mod otel;

/// Installs the global subscriber (log filter and format, plus the OTLP trace layer when an
/// endpoint is configured in `env`). `RUST_LOG`, when given, wins over `settings.filter`.
/// The filter always quiets h2/hyper/rustls internals unless asked for by name: their
/// per-frame spans cost more than the requests themselves. Keep the guard until exit: it
/// flushes the spans still queued.
pub fn init(settings: &LogSettings, env: &HashMap<String, String>) -> otel::TracingGuard {
    let directives = env.get("RUST_LOG").unwrap_or(&settings.filter);
    let filter = EnvFilter::builder().parse_lossy(format!(
        "h2=warn,hyper=warn,hyper_util=warn,tower=warn,rustls=warn,opentelemetry=warn,{directives}"
    ));
    let (provider, state) = otel::pipeline(env);
    let traces = provider.as_ref().map(otel::layer);
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let result = match settings.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a global subscriber was already installed");
    }
    match state {
        otel::TracingState::Exporting { endpoint, protocol } => {
            tracing::info!(%endpoint, %protocol, "exporting traces over OTLP");
        }
        otel::TracingState::Disabled(why) => tracing::info!(reason = why, "tracing export off"),
    }
    otel::guard(provider)
}
