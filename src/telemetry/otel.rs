//! OpenTelemetry traces over OTLP (gRPC or HTTP/protobuf) through a bounded batch queue,
//! and W3C trace-context + baggage propagation.
//!
//! Standard variables, all read from the environment map passed in:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (export is off
//! without one), `OTEL_EXPORTER_OTLP_PROTOCOL` / `_TRACES_PROTOCOL` (`grpc` default or
//! `http/protobuf`), `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TIMEOUT` (read by
//! the exporter), `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (read by the resource
//! detectors), and, implemented here because the Rust SDK leaves them to the application or
//! reads them from the process environment only: `OTEL_TRACES_SAMPLER` (+`_ARG`),
//! `OTEL_PROPAGATORS`, `OTEL_SDK_DISABLED` and `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
//!
//! Spans always get real W3C ids (so every response can carry `x-trace-id` and every log
//! line a `trace_id`); with export off, only calls whose caller sampled them are recorded,
//! and nothing is sent anywhere.
//!
//! The SERVER spans built from a call's record go to an uncompressed OTLP/gRPC endpoint
//! encoded by hand ([`otlp`]: no `SpanData`, no per-span allocation); everything else takes
//! the SDK's exporter.
//!
//! The queue between the request path and the exporter is bounded: when it is full a span
//! is dropped (never waited for) and counted, as are spans whose export failed; both show
//! on `/metrics` as `jisu_otel_spans_dropped_total{reason}`.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::{
    Context, global,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::SpanExporter as OtlpExporter;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor},
};
use parking_lot::Mutex;

use super::otlp;

/// The instrumentation scope of the spans Jisu builds from a call's record.
pub const SCOPE: &str = "jisu";

/// Counts of spans handed to the exporter, process-wide (one pipeline per process).
#[derive(Debug)]
pub struct SpanStats {
    pub exported: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_export_failed: AtomicU64,
}

pub static SPAN_STATS: SpanStats = SpanStats {
    exported: AtomicU64::new(0),
    dropped_queue_full: AtomicU64::new(0),
    dropped_export_failed: AtomicU64::new(0),
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

/// Why export is on or off, said once at start-up, plus settings that were ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingState {
    pub export: Export,
    pub sampler: String,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    On {
        endpoint: String,
        protocol: String,
        /// How the SERVER spans are exported: encoded by Jisu, or why the SDK's exporter
        /// takes them (see [`otlp::GrpcExporter::new`]).
        server_spans: &'static str,
    },
    Off(&'static str),
}

/// Batch settings (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    pub schedule_delay: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
}

impl Default for BatchSettings {
    /// The specification's defaults but the queue: 8,192 spans, not 2,048. At 100 %
    /// sampling this server queues ~210,000 spans/s on one core at its closed-loop maximum,
    /// where 2,048 is ~10 ms of them, and an export round trip there (driven by a saturated
    /// runtime) takes 3–8 ms: now and then a few slow ones in a row overflowed it (spans
    /// dropped at the maximum in bench runs 20 and 24, 558 and 160, and in 1 of 8 series of
    /// five 5-s runs; none in 20 runs with 8,192, at ~0.3 MiB more peak RSS; BENCHMARKS.md,
    /// sessions 19–20). `OTEL_BSP_MAX_QUEUE_SIZE` sets it.
    fn default() -> Self {
        Self {
            schedule_delay: Duration::from_secs(5),
            max_queue: 8192,
            max_batch: 512,
        }
    }
}

fn number(env: &HashMap<String, String>, key: &str, warnings: &mut Vec<String>) -> Option<u64> {
    let raw = env.get(key)?;
    match raw.trim().parse::<u64>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            warnings.push(format!("{key}={raw:?} is not a positive integer; ignored"));
            None
        }
    }
}

impl BatchSettings {
    fn from_env(env: &HashMap<String, String>, warnings: &mut Vec<String>) -> Self {
        let mut s = Self::default();
        if let Some(ms) = number(env, "OTEL_BSP_SCHEDULE_DELAY", warnings) {
            s.schedule_delay = Duration::from_millis(ms);
        }
        if let Some(n) = number(env, "OTEL_BSP_MAX_QUEUE_SIZE", warnings) {
            s.max_queue = n as usize;
        }
        if let Some(n) = number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", warnings) {
            s.max_batch = (n as usize).min(s.max_queue);
        }
        s
    }
}

/// `OTEL_TRACES_SAMPLER` (+`_ARG`), default `parentbased_always_on`.
pub fn sampler(env: &HashMap<String, String>, warnings: &mut Vec<String>) -> (Sampler, String) {
    let name = env
        .get("OTEL_TRACES_SAMPLER")
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_else(|| "parentbased_always_on".into());
    let mut ratio = || {
        let raw = env.get("OTEL_TRACES_SAMPLER_ARG");
        match raw.map(|r| r.trim().parse::<f64>()) {
            None => 1.0,
            Some(Ok(r)) if (0.0..=1.0).contains(&r) => r,
            Some(_) => {
                warnings.push(format!(
                    "OTEL_TRACES_SAMPLER_ARG={:?} is not a ratio in [0, 1]; using 1.0",
                    raw.map(String::as_str).unwrap_or_default()
                ));
                1.0
            }
        }
    };
    let parent = |s: Sampler| Sampler::ParentBased(Box::new(s));
    let sampler = match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => {
            let r = ratio();
            return (Sampler::TraceIdRatioBased(r), format!("traceidratio({r})"));
        }
        "parentbased_always_on" => parent(Sampler::AlwaysOn),
        "parentbased_always_off" => parent(Sampler::AlwaysOff),
        "parentbased_traceidratio" => {
            let r = ratio();
            return (
                parent(Sampler::TraceIdRatioBased(r)),
                format!("parentbased_traceidratio({r})"),
            );
        }
        other => {
            warnings.push(format!(
                "OTEL_TRACES_SAMPLER={other:?} is not supported; using parentbased_always_on"
            ));
            return (parent(Sampler::AlwaysOn), "parentbased_always_on".into());
        }
    };
    (sampler, name)
}

/// `OTEL_PROPAGATORS`, default `tracecontext,baggage`; `none` turns propagation off.
pub fn propagator(
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> TextMapCompositePropagator {
    let list = env
        .get("OTEL_PROPAGATORS")
        .map(String::as_str)
        .unwrap_or("tracecontext,baggage");
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            "none" => propagators.clear(),
            other => warnings.push(format!(
                "OTEL_PROPAGATORS: {other:?} is not supported (tracecontext, baggage, none)"
            )),
        }
    }
    TextMapCompositePropagator::new(propagators)
}

fn is_true(env: &HashMap<String, String>, key: &str) -> bool {
    env.get(key)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Installs the propagators and builds the tracer provider: exporting over OTLP when an
/// endpoint is configured in `env`, otherwise id-only (see the module documentation).
pub fn pipeline(env: &HashMap<String, String>) -> (SdkTracerProvider, TracingState) {
    let mut warnings = Vec::new();
    global::set_text_map_propagator(propagator(env, &mut warnings));
    let mut resource = Resource::builder();
    if !env.contains_key("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("jisu");
    }
    let resource = resource.build();
    let off = |why: &'static str, warnings: Vec<String>| {
        // Ids for every span; recorded only when the caller sampled, exported nowhere.
        let _ = SAMPLER.set(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .with_resource(resource.clone())
            .build();
        let state = TracingState {
            export: Export::Off(why),
            sampler: "none (export off)".into(),
            warnings,
        };
        (provider, state)
    };
    if is_true(env, "OTEL_SDK_DISABLED") {
        return off("OTEL_SDK_DISABLED=true", warnings);
    }
    let Some(endpoint) = env
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.is_empty())
        .cloned()
    else {
        return off("no OTEL_EXPORTER_OTLP_ENDPOINT", warnings);
    };
    let protocol = env
        .get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .cloned()
        .unwrap_or_else(|| "grpc".into());
    let exporter = match protocol.as_str() {
        "http/protobuf" => OtlpExporter::builder().with_http().build(),
        "grpc" => OtlpExporter::builder().with_tonic().build(),
        other => {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (grpc, http/protobuf)"
            ));
            return off("unsupported OTLP protocol", warnings);
        }
    };
    let mut exporter = match exporter {
        Ok(e) => e,
        Err(e) => {
            warnings.push(format!("OTLP exporter for {endpoint}: {e}"));
            return off("the OTLP exporter could not be built", warnings);
        }
    };
    exporter.set_resource(&resource);
    // The SERVER spans go encoded by hand over OTLP/gRPC where that path applies; the
    // SDK's exporter takes the rest (and all of them where it does not).
    let encoded = if protocol == "grpc" {
        let framing = otlp::Framing::new(&resource, SCOPE);
        otlp::GrpcExporter::new(&endpoint, env, framing, &mut warnings)
    } else {
        Err("not OTLP/gRPC")
    };
    let server_spans = match &encoded {
        Ok(_) => "encoded by Jisu (OTLP/gRPC)",
        Err(why) => why,
    };
    let encoded = encoded.ok();
    let batch = BatchSettings::from_env(env, &mut warnings);
    let (sampler, sampler_name) = sampler(env, &mut warnings);
    let _ = SAMPLER.set(sampler.clone());
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_span_processor(QueueProcessor::start(exporter, encoded, batch))
        .with_resource(resource)
        .build();
    let state = TracingState {
        export: Export::On {
            endpoint,
            protocol,
            server_spans,
        },
        sampler: sampler_name,
        warnings,
    };
    (provider, state)
}

/// The sampler of the process's pipeline, for the calls whose spans are built from their
/// record rather than through the `tracing` layer (the SERVER spans; see [`sample`]).
static SAMPLER: std::sync::OnceLock<Sampler> = std::sync::OnceLock::new();

/// The span context of a new SERVER span in trace `trace_id` (the caller's, or a new
/// one) under `parent` (the caller's context, when it sent one), sampled or not as the
/// pipeline's sampler (`OTEL_TRACES_SAMPLER`) decides — before any span exists, so an
/// unsampled call costs no span at all. Without a pipeline (no [`pipeline`] in this
/// process), sampled only when the caller sampled it.
pub fn sample(
    parent: Option<&Context>,
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    name: &str,
) -> opentelemetry::trace::SpanContext {
    decide(SAMPLER.get(), parent, trace_id, span_id, name)
}

fn decide(
    sampler: Option<&Sampler>,
    parent: Option<&Context>,
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    name: &str,
) -> opentelemetry::trace::SpanContext {
    use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt as _, TraceFlags};
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample as _};
    let (sampled, state) = match sampler {
        Some(sampler) => {
            let result = sampler.should_sample(parent, trace_id, name, &SpanKind::Server, &[], &[]);
            (
                result.decision == SamplingDecision::RecordAndSample,
                result.trace_state,
            )
        }
        None => parent.map_or((false, Default::default()), |p| {
            let span = p.span();
            let sc = span.span_context();
            (sc.is_sampled(), sc.trace_state().clone())
        }),
    };
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, false, state)
}

/// The `tracing` layer that turns spans into OpenTelemetry spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    // No per-span busy/idle timing and no thread-local context activation on every enter:
    // both cost on each poll, and parents come from the span tree, not the active context.
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("jisu"))
        .with_tracked_inactivity(false)
        .with_context_activation(false)
}

pub fn guard(provider: SdkTracerProvider) -> TracingGuard {
    TracingGuard {
        provider: Some(provider),
    }
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

/// Writes W3C headers into an outgoing request.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The remote parent context carried by a request's headers.
pub fn extract(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `cx` (trace context and baggage) into outgoing headers.
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

enum Msg {
    /// A batch is full: export now rather than at the schedule.
    Wake,
    Flush(SyncSender<OTelSdkResult>),
    Shutdown(SyncSender<OTelSdkResult>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Wake => "Wake",
            Msg::Flush(_) => "Flush",
            Msg::Shutdown(_) => "Shutdown",
        })
    }
}

/// The spans waiting for export, shared by the request path and the export thread.
///
/// A span is pushed under a short lock onto a vector (no allocation per span, no
/// wake-up): the thread is woken only when a whole batch is waiting, otherwise it wakes
/// at the schedule. Waking it per span (a channel send per span) cost a context switch on
/// the server's core per sampled call: 11–15% of the server's CPU samples at 10%
/// sampling under full load.
#[derive(Debug)]
struct Queue {
    pending: Mutex<Pending>,
    control: SyncSender<Msg>,
    max_queue: usize,
    max_batch: usize,
    /// Whether spans built from a call's record are queued encoded ([`keep_encoded`]).
    encodes: bool,
}

/// Spans waiting: the SDK's, and those encoded by [`otlp::Span::put`] one after the
/// other (with where each ends, to cut batches). The export thread swaps in its emptied
/// buffers, so they keep their capacity and pushing allocates nothing once warm.
#[derive(Debug, Default)]
struct Pending {
    sdk: Vec<SpanData>,
    encoded: Vec<u8>,
    ends: Vec<usize>,
}

impl Pending {
    fn len(&self) -> usize {
        self.sdk.len() + self.ends.len()
    }
}

impl Queue {
    /// Adds one span with `add` unless the queue is full (then counted as a drop and
    /// false); wakes the export thread when a whole batch is waiting.
    fn admit(&self, add: impl FnOnce(&mut Pending)) -> bool {
        let len = {
            let mut pending = self.pending.lock();
            if pending.len() >= self.max_queue {
                drop(pending);
                SPAN_STATS
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return false;
            }
            add(&mut pending);
            pending.len()
        };
        if len == self.max_batch {
            // Full or busy channel: the thread is awake already, or will be at the schedule.
            let _ = self.control.try_send(Msg::Wake);
        }
        true
    }

    /// Queues `span`; false (counted as a drop) when the queue is full.
    fn push(&self, span: SpanData) -> bool {
        self.admit(|p| p.sdk.push(span))
    }

    /// Queues `span` encoded; false (counted as a drop) when the queue is full.
    fn push_encoded(&self, span: &otlp::Span<'_>) -> bool {
        self.admit(|p| {
            span.put(&mut p.encoded);
            p.ends.push(p.encoded.len());
        })
    }

    /// Swaps what is waiting for `into`'s (emptied) buffers.
    fn take(&self, into: &mut Pending) {
        std::mem::swap(&mut *self.pending.lock(), into);
    }
}

/// A batch span processor whose queue is bounded and whose losses are counted in
/// [`SPAN_STATS`]. The request path only ever pushes under a short lock; one thread
/// batches and exports.
#[derive(Debug)]
pub struct QueueProcessor {
    queue: std::sync::Arc<Queue>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// The export queue of the process's pipeline, for spans kept after the fact
/// ([`keep`]); unset while export is off.
static KEEP: std::sync::OnceLock<std::sync::Arc<Queue>> = std::sync::OnceLock::new();

/// Whether spans reach a collector (an OTLP endpoint is configured).
pub fn exporting() -> bool {
    KEEP.get().is_some()
}

/// Exports the spans of a call that head sampling dropped but whose outcome keeps it (an
/// error, a slow call): they join the same bounded queue as sampled spans. False when
/// export is off or the queue had no room for the first (the SERVER span); every span
/// that finds no room is counted as a drop.
pub fn keep(spans: Vec<SpanData>) -> bool {
    let Some(queue) = KEEP.get() else {
        return false;
    };
    let mut spans = spans.into_iter();
    let first = spans.next().is_some_and(|s| queue.push(s));
    for span in spans {
        queue.push(span);
    }
    first
}

/// Like [`keep`], one span at a time, for a pipeline that takes spans encoded (see
/// [`encodes`]): whether it was queued (false when export is off, the pipeline does not
/// encode, or the queue is full).
pub fn keep_encoded(span: &otlp::Span<'_>) -> bool {
    KEEP.get()
        .filter(|q| q.encodes)
        .is_some_and(|q| q.push_encoded(span))
}

/// Whether the pipeline takes the spans built from a call's record encoded
/// ([`keep_encoded`]) rather than as `SpanData` ([`keep`]).
pub fn encodes() -> bool {
    KEEP.get().is_some_and(|q| q.encodes)
}

impl QueueProcessor {
    /// Starts the export thread; this queue also takes the spans kept after the fact
    /// ([`keep`]) when it is the process's first.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        encoded: Option<otlp::GrpcExporter>,
        settings: BatchSettings,
    ) -> Self {
        let processor = Self::spawn(exporter, encoded, settings);
        let _ = KEEP.set(processor.queue.clone());
        processor
    }

    fn spawn<E: SpanExporter + 'static>(
        exporter: E,
        encoded: Option<otlp::GrpcExporter>,
        settings: BatchSettings,
    ) -> Self {
        let (control, rx) = mpsc::sync_channel(16);
        let queue = std::sync::Arc::new(Queue {
            pending: Mutex::new(Pending::default()),
            control,
            max_queue: settings.max_queue,
            max_batch: settings.max_batch,
            encodes: encoded.is_some(),
        });
        let worker = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("jisu-otlp-export".into())
                .spawn(move || export_loop(exporter, encoded, &queue, rx, settings))
                .expect("spawning the span export thread")
        };
        Self {
            queue,
            worker: Mutex::new(Some(worker)),
        }
    }

    fn ask(&self, msg: fn(SyncSender<OTelSdkResult>) -> Msg, timeout: Duration) -> OTelSdkResult {
        let (reply, answer) = mpsc::sync_channel(1);
        self.queue
            .control
            .send(msg(reply))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.queue.push(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Msg::Flush, Duration::from_secs(10))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let Some(worker) = self.worker.lock().take() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        let result = self.ask(Msg::Shutdown, timeout);
        if result.is_ok() {
            let _ = worker.join();
        }
        result
    }
}

/// Counts a batch's outcome, and says once when export starts failing and when it
/// recovers.
#[derive(Debug, Default)]
struct Outcome {
    failing: bool,
    /// Batches that failed so far, and the last one's error.
    failures: u64,
    last_error: String,
}

impl Outcome {
    fn record(&mut self, n: u64, result: Result<u64, String>) -> OTelSdkResult {
        match result {
            Ok(rejected) => {
                SPAN_STATS
                    .exported
                    .fetch_add(n - rejected.min(n), Ordering::Relaxed);
                if rejected > 0 {
                    SPAN_STATS
                        .dropped_export_failed
                        .fetch_add(rejected.min(n), Ordering::Relaxed);
                    tracing::warn!(spans = rejected, "the collector rejected spans");
                }
                if self.failing {
                    tracing::info!("span export recovered");
                    self.failing = false;
                }
                Ok(())
            }
            Err(e) => {
                SPAN_STATS
                    .dropped_export_failed
                    .fetch_add(n, Ordering::Relaxed);
                if !self.failing {
                    tracing::warn!(error = %e, spans = n, "span export failed; dropping spans until it recovers");
                    self.failing = true;
                }
                self.failures += 1;
                self.last_error.clone_from(&e);
                Err(OTelSdkError::InternalFailure(e))
            }
        }
    }
}

/// What the export thread exports with, and how its batches went.
struct Exports<'a, E> {
    exporter: E,
    encoded: Option<otlp::GrpcExporter>,
    queue: &'a Queue,
    max_batch: usize,
    /// Shared with the encoded batches' outcomes, which end on the runtime.
    outcome: std::sync::Arc<Mutex<Outcome>>,
    batch: Pending,
}

impl<E: SpanExporter> Exports<'_, E> {
    /// Exports what is queued, in batches of at most `max_batch`: the SDK's spans one batch
    /// after the other, the encoded ones started and not waited for (`GrpcExporter::start`).
    fn export(&mut self) -> OTelSdkResult {
        self.queue.take(&mut self.batch);
        let mut result = Ok(());
        let mut pending = std::mem::take(&mut self.batch.sdk);
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(self.max_batch));
            let spans = std::mem::replace(&mut pending, rest);
            let n = spans.len() as u64;
            let r = futures::executor::block_on(self.exporter.export(spans)).map(|()| 0);
            if let Err(e) = self.outcome.lock().record(n, r.map_err(|e| e.to_string())) {
                result = Err(e);
            }
        }
        if let Some(client) = &self.encoded {
            let mut start = 0;
            for ends in self.batch.ends.chunks(self.max_batch) {
                let end = ends[ends.len() - 1];
                let (n, outcome) = (ends.len() as u64, self.outcome.clone());
                client.start(&self.batch.encoded[start..end], move |r| {
                    let _ = outcome.lock().record(n, r.map_err(|s| s.to_string()));
                });
                start = end;
            }
        }
        self.batch.encoded.clear();
        self.batch.ends.clear();
        result
    }

    /// Exports what is queued and waits until every export started has ended: an error when
    /// a batch failed meanwhile (a flush, the shutdown).
    fn export_all(&mut self) -> OTelSdkResult {
        let failures = self.outcome.lock().failures;
        let result = self.export();
        if let Some(client) = &self.encoded {
            client.wait_all();
        }
        let outcome = self.outcome.lock();
        if outcome.failures > failures {
            return Err(OTelSdkError::InternalFailure(outcome.last_error.clone()));
        }
        result
    }
}

fn export_loop<E: SpanExporter>(
    exporter: E,
    encoded: Option<otlp::GrpcExporter>,
    queue: &Queue,
    rx: mpsc::Receiver<Msg>,
    settings: BatchSettings,
) {
    let mut exports = Exports {
        exporter,
        encoded,
        queue,
        max_batch: settings.max_batch,
        outcome: std::sync::Arc::new(Mutex::new(Outcome::default())),
        batch: Pending::default(),
    };
    let mut deadline = Instant::now() + settings.schedule_delay;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Wake) => {
                let _ = exports.export();
            }
            Ok(Msg::Flush(reply)) => {
                let _ = reply.send(exports.export_all());
            }
            Ok(Msg::Shutdown(reply)) => {
                let result = exports.export_all();
                let _ = exports.exporter.shutdown();
                let _ = reply.send(result);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = exports.export();
                deadline = Instant::now() + settings.schedule_delay;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = exports.export_all();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The SERVER span's sampling is decided before any span exists, by the pipeline's own
    /// sampler: the caller's choice under the parent-based samplers (with its trace
    /// state), the ratio by trace id for a new trace, and without a pipeline the
    /// caller's choice only.
    #[test]
    fn sampling_is_decided_by_the_pipelines_sampler_before_any_span_exists() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        };
        let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
        let caller = |flags| {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                flags,
                true,
                state.clone(),
            ))
        };
        let (sampled, unsampled) = (caller(TraceFlags::SAMPLED), caller(TraceFlags::default()));
        let id = TraceId::from(7u128);
        let span = SpanId::from(3u64);
        let never = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.0)));
        let always = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(1.0)));
        let d = decide(Some(&never), Some(&sampled), id, span, "m");
        assert!(d.is_sampled(), "the caller sampled it");
        assert_eq!((d.trace_id(), d.span_id()), (id, span));
        assert_eq!(d.trace_state().get("vendor"), Some("x"));
        assert!(!decide(Some(&always), Some(&unsampled), id, span, "m").is_sampled());
        assert!(!decide(Some(&never), None, id, span, "m").is_sampled());
        assert!(decide(Some(&always), None, id, span, "m").is_sampled());
        // A ratio splits new traces by id: ids below the ratio's bound are sampled.
        let half = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.5)));
        assert!(decide(Some(&half), None, TraceId::from(1u128), span, "m").is_sampled());
        assert!(!decide(Some(&half), None, TraceId::from(u128::MAX), span, "m").is_sampled());
        // Without a pipeline: what the caller said.
        assert!(decide(None, Some(&sampled), id, span, "m").is_sampled());
        assert!(!decide(None, Some(&unsampled), id, span, "m").is_sampled());
        assert!(!decide(None, None, id, span, "m").is_sampled());
    }

    #[test]
    fn sampler_names_and_ratios() {
        let mut w = Vec::new();
        let (_, name) = sampler(&env(&[]), &mut w);
        assert_eq!(name, "parentbased_always_on");
        let (s, name) = sampler(
            &env(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ]),
            &mut w,
        );
        assert_eq!(name, "parentbased_traceidratio(0.1)");
        assert!(matches!(s, Sampler::ParentBased(_)));
        assert!(w.is_empty());
        let (_, name) = sampler(&env(&[("OTEL_TRACES_SAMPLER", "xray")]), &mut w);
        assert_eq!(name, "parentbased_always_on");
        let (_, name) = sampler(
            &env(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ]),
            &mut w,
        );
        assert_eq!(name, "traceidratio(1)");
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn unsupported_propagators_are_reported() {
        let mut w = Vec::new();
        let _ = propagator(&env(&[("OTEL_PROPAGATORS", "tracecontext,b3")]), &mut w);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("b3"));
    }

    /// Counts what it is given, batch by batch.
    #[derive(Debug)]
    struct Batches(std::sync::mpsc::Sender<usize>);

    impl SpanExporter for Batches {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let _ = self.0.send(batch.len());
            Ok(())
        }
    }

    fn span_data() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(1),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "s".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_full_batch_is_exported_at_once_and_a_full_queue_drops() {
        let (tx, batches) = std::sync::mpsc::channel();
        let processor = QueueProcessor::spawn(
            Batches(tx),
            None,
            BatchSettings {
                // Never, within the test: only a full batch triggers an export.
                schedule_delay: Duration::from_secs(3600),
                max_queue: 6,
                max_batch: 3,
            },
        );
        for _ in 0..3 {
            processor.on_end(span_data());
        }
        assert_eq!(batches.recv_timeout(Duration::from_secs(10)), Ok(3));
        // The queue holds 6: the 7th is dropped and counted; a flush sends the rest in
        // batches of at most 3.
        let dropped = SPAN_STATS.dropped_queue_full.load(Ordering::Relaxed);
        let queue = &processor.queue;
        queue.pending.lock().sdk.extend((0..5).map(|_| span_data()));
        assert!(queue.push(span_data()));
        assert!(!queue.push(span_data()));
        assert!(SPAN_STATS.dropped_queue_full.load(Ordering::Relaxed) > dropped);
        processor.force_flush().unwrap();
        assert_eq!(batches.try_iter().collect::<Vec<_>>(), [3, 3]);
        processor
            .shutdown_with_timeout(Duration::from_secs(10))
            .unwrap();
    }

    /// Encoded spans share the bound and the batch wake-up with the SDK's: the push that
    /// reaches a batch wakes the thread once, spans past the bound are dropped and
    /// counted, and each queued span's bytes end where the queue says.
    #[test]
    fn encoded_spans_are_bounded_and_batched_like_the_sdks() {
        let (control, rx) = mpsc::sync_channel(16);
        let queue = Queue {
            pending: Mutex::new(Pending::default()),
            control,
            max_queue: 5,
            max_batch: 3,
            encodes: true,
        };
        let span = |i: u8| otlp::Span {
            trace_id: [i; 16],
            span_id: [i; 8],
            trace_state: "",
            parent: None,
            parent_is_remote: false,
            name: ["s", "/", "m"],
            kind: otlp::Kind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            encoded_attributes: &[],
            attributes: &[],
            error: None,
        };
        assert!(queue.push_encoded(&span(1)) && queue.push_encoded(&span(2)));
        assert!(rx.try_recv().is_err(), "2 of a batch of 3: no wake-up");
        queue.push(span_data());
        assert!(matches!(rx.try_recv(), Ok(Msg::Wake)), "3: a batch");
        let dropped = SPAN_STATS.dropped_queue_full.load(Ordering::Relaxed);
        // Room for 2 of 3.
        let pushed = [3, 4, 5].map(|i| queue.push_encoded(&span(i)));
        assert!(pushed[0]);
        assert_eq!(pushed, [true, true, false]);
        assert!(rx.try_recv().is_err(), "one wake-up per batch");
        assert!(SPAN_STATS.dropped_queue_full.load(Ordering::Relaxed) > dropped);
        assert!(
            !queue.push_encoded(&span(6)),
            "full: the first is not queued"
        );
        let mut taken = Pending::default();
        queue.take(&mut taken);
        assert_eq!((taken.sdk.len(), taken.ends.len()), (1, 4));
        let one = span(1).encoded_len();
        assert_eq!(taken.ends, [one, 2 * one, 3 * one, 4 * one]);
        assert_eq!(taken.encoded.len(), 4 * one);
        assert_eq!(queue.pending.lock().len(), 0);
    }

    #[test]
    fn batch_settings_from_env() {
        let mut w = Vec::new();
        let s = BatchSettings::from_env(
            &env(&[
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
            ]),
            &mut w,
        );
        assert_eq!(s.schedule_delay, Duration::from_millis(100));
        assert_eq!(s.max_queue, 64);
        assert_eq!(s.max_batch, 64);
        assert!(w.is_empty());
    }
}
