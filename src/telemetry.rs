//! Telemetry: logging (filter and format, with the trace and span ids of the call in every
//! line), OpenTelemetry traces, Prometheus metrics and the `/metrics` endpoint.
use std::{collections::HashMap, fmt, io::IsTerminal};

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

use crate::config::{LogFormat, LogSettings};

pub mod metrics;
pub mod metrics_endpoint;
pub mod otel;

/// Installs the global subscriber (log filter and format, plus the OpenTelemetry layer) and
/// the trace pipeline configured in `env`. `RUST_LOG`, when given, wins over
/// `settings.filter`. The filter always quiets h2/hyper/rustls internals unless asked for
/// by name: their per-frame spans cost more than the requests themselves. Keep the guard
/// until exit: it flushes the spans still queued.
pub fn init(settings: &LogSettings, env: &HashMap<String, String>) -> otel::TracingGuard {
    let directives = env.get("RUST_LOG").unwrap_or(&settings.filter);
    let filter = EnvFilter::builder().parse_lossy(format!(
        "h2=warn,hyper=warn,hyper_util=warn,tower=warn,rustls=warn,opentelemetry=warn,\
         opentelemetry_sdk=warn,opentelemetry_otlp=warn,{directives}"
    ));
    let (provider, state) = otel::pipeline(env);
    let traces = otel::layer(&provider);
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let result = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(TraceIds {
                        inner: tracing_subscriber::fmt::format()
                            .json()
                            .with_current_span(true)
                            .with_span_list(false),
                        json: true,
                    })
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(TraceIds {
                        inner: tracing_subscriber::fmt::format()
                            .with_target(false)
                            .with_ansi(std::io::stderr().is_terminal()),
                        json: false,
                    })
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if result.is_err() {
        tracing::debug!("a global subscriber was already installed");
    }
    for warning in &state.warnings {
        tracing::warn!("{warning}");
    }
    match &state.export {
        otel::Export::On { endpoint, protocol } => {
            tracing::info!(%endpoint, %protocol, sampler = %state.sampler, "exporting traces over OTLP");
        }
        otel::Export::Off(why) => tracing::info!(
            reason = why,
            "trace export off (trace ids are still sent in x-trace-id and logged)"
        ),
    }
    otel::guard(provider)
}

/// The W3C trace id and span id of the current OpenTelemetry context, when valid.
pub fn current_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Adds `trace_id` and `span_id` to every log line written inside a span: top-level keys
/// in JSON, a suffix in the pretty format.
#[derive(Debug)]
struct TraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for TraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = ctx.lookup_current().and(current_ids()) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json
            && let Some(rest) = line.strip_prefix('{')
        {
            write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            )
        } else {
            let body = line.trim_end_matches('\n');
            writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
        }
    }
}
