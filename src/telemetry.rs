//! Telemetry: logging (filter and format), Prometheus metrics and the `/metrics` endpoint.
use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, LogSettings};

pub mod metrics;
pub mod metrics_endpoint;

/// Installs the global subscriber. `RUST_LOG`, when given, wins over `settings.filter`.
/// The filter always quiets h2/hyper/rustls internals unless asked for by name: their
/// per-frame spans cost more than the requests themselves.
pub fn init_logging(settings: &LogSettings, rust_log: Option<&str>) {
    let directives = rust_log.unwrap_or(&settings.filter);
    let filter = EnvFilter::builder().parse_lossy(format!(
        "h2=warn,hyper=warn,hyper_util=warn,tower=warn,rustls=warn,{directives}"
    ));
    let registry = tracing_subscriber::registry().with(filter);
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
}
