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
    let (provider, state) = otel::pipeline(env);
    let result = subscriber(settings.format, directives, &provider).try_init();
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

/// The subscriber: the OpenTelemetry layer (Jisu's own spans only) and the log layer
/// (`directives` over h2/hyper/rustls quieted, events only).
fn subscriber(
    format: LogFormat,
    directives: &str,
    provider: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> impl Subscriber + Send + Sync + for<'a> LookupSpan<'a> + use<> {
    let traces = otel::layer(provider).with_filter(
        tracing_subscriber::filter::Targets::new().with_target("jisu", tracing::Level::INFO),
    );
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(TraceIds {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false),
                json: true,
            })
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_writer(std::io::stderr)
            .with_filter(log_filter(directives))
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .event_format(TraceIds {
                inner: tracing_subscriber::fmt::format()
                    .with_target(false)
                    .with_ansi(std::io::stderr().is_terminal()),
                json: false,
            })
            .with_writer(std::io::stderr)
            .with_filter(log_filter(directives))
            .boxed(),
    };
    tracing_subscriber::registry().with(traces).with(logs)
}

/// The log layer's filter: `directives` (h2/hyper/rustls internals quieted unless named),
/// events only: it never formats span fields, which would cost on every call (each line
/// carries the call's `trace_id`/`span_id` instead).
///
/// It tells its most verbose level: a filter without that hint leaves tracing's global
/// maximum at TRACE, and then every `trace!`/`debug!` in h2's and hyper's hot paths asks
/// its callsite's interest on every frame (~1,000 instructions per call, counted).
fn log_filter<S>(directives: &str) -> impl tracing_subscriber::layer::Filter<S> + use<S> {
    let filter = EnvFilter::builder().parse_lossy(format!(
        "h2=warn,hyper=warn,hyper_util=warn,tower=warn,rustls=warn,opentelemetry=warn,\
         opentelemetry_sdk=warn,opentelemetry_otlp=warn,{directives}"
    ));
    let events_only = tracing_subscriber::filter::filter_fn(|meta| meta.is_event())
        .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE);
    filter.and(events_only)
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

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;

    use super::*;

    /// Without a hint from every layer, tracing's global maximum is TRACE and h2's
    /// `trace!`s cost on every frame.
    #[test]
    fn the_subscriber_tells_the_most_verbose_level_it_records() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        for (format, directives, level) in [
            (LogFormat::Pretty, "info", LevelFilter::INFO),
            (LogFormat::Json, "info", LevelFilter::INFO),
            (LogFormat::Pretty, "warn", LevelFilter::INFO),
            (LogFormat::Json, "warn,jisu=debug", LevelFilter::DEBUG),
            (LogFormat::Pretty, "h2=trace", LevelFilter::TRACE),
        ] {
            let subscriber = subscriber(format, directives, &provider);
            assert_eq!(
                subscriber.max_level_hint(),
                Some(level),
                "{format:?} {directives}"
            );
        }
    }
}
