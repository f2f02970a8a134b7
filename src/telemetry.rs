//! Telemetry: logging (filter and format, with the trace and span ids of the call in every
//! line), OpenTelemetry traces, Prometheus metrics and the `/metrics` endpoint.
use std::{collections::HashMap, fmt, io::IsTerminal};

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    filter::FilterExt as _,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

use crate::config::{LogFormat, LogSettings};

pub mod debug;
pub mod exemplars;
pub mod metrics;
pub mod metrics_endpoint;
pub mod otel;
pub mod otlp;
pub mod recent;
pub mod rpcz;

/// Installs the global subscriber (log filter and format, plus the OpenTelemetry layer) and
/// the trace pipeline configured in `env`. `RUST_LOG`, when given, wins over
/// `settings.filter`; it filters the logs only, so quieting logs never turns traces off.
/// The log filter always quiets h2/hyper/rustls internals unless asked for by name, and
/// traces only ever record Jisu's own spans: dependencies' per-frame spans cost more than
/// the requests themselves. Keep the guard until exit: it flushes the spans still queued.
pub fn init(settings: &LogSettings, env: &HashMap<String, String>) -> otel::TracingGuard {
    let directives = env.get("RUST_LOG").unwrap_or(&settings.filter);
    let filter = EnvFilter::builder().parse_lossy(format!(
        "h2=warn,hyper=warn,hyper_util=warn,tower=warn,rustls=warn,opentelemetry=warn,\
         opentelemetry_sdk=warn,opentelemetry_otlp=warn,{directives}"
    ));
    let (provider, state) = otel::pipeline(env);
    let traces = otel::layer(&provider).with_filter(
        tracing_subscriber::filter::Targets::new().with_target("jisu", tracing::Level::INFO),
    );
    let registry = tracing_subscriber::registry().with(traces);
    let result = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(TraceIds {
                        inner: tracing_subscriber::fmt::format()
                            .json()
                            .with_current_span(false)
                            .with_span_list(false),
                        json: true,
                    })
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_writer(std::io::stderr)
                    .with_filter(filter.and(events_only())),
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
                    .with_writer(std::io::stderr)
                    .with_filter(filter.and(events_only())),
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
        otel::Export::On {
            endpoint,
            protocol,
            server_spans,
        } => {
            tracing::info!(%endpoint, %protocol, sampler = %state.sampler, server_spans, "exporting traces over OTLP");
        }
        otel::Export::Off(why) => tracing::info!(
            reason = why,
            "trace export off (trace ids are still sent in x-trace-id and logged)"
        ),
    }
    otel::guard(provider)
}

/// The log layer sees events only: it never formats span fields, which would cost on
/// every call (each line carries the call's `trace_id`/`span_id` instead).
fn events_only<S>() -> impl tracing_subscriber::layer::Filter<S> + Clone {
    tracing_subscriber::filter::filter_fn(|meta| meta.is_event())
}

/// The W3C trace id and span id of the span `id`, when it has valid ones.
pub fn span_ids(id: &tracing::span::Id) -> Option<(String, String)> {
    let cx = tracing::dispatcher::get_default(|d| tracing_opentelemetry::get_otel_context(id, d))?;
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
        // The call being served on this thread (its SERVER span exists only as ids until
        // the call ends), else the current span of the whole subscriber (this layer
        // itself sees no spans).
        let ids = jisu_client::children::current_ids()
            .map(|(t, s)| (t.to_string(), s.to_string()))
            .or_else(|| tracing::Span::current().id().and_then(|id| span_ids(&id)));
        let Some((trace_id, span_id)) = ids else {
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
