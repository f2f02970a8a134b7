//! Observes every RPC: RED metrics (started, handled by final code, messages in and out,
//! the handling-time histogram) and the OpenTelemetry SERVER span, continued from the
//! caller's W3C `traceparent`, with its trace id echoed in `x-trace-id`. Both need the
//! same start, end and final code, so one layer records them. Outermost, so calls refused
//! by auth are counted and traced too.
//!
//! The final code is read from the response: trailers-only responses carry `grpc-status`
//! in the headers, streams in the trailers; a body dropped before its trailers counts
//! as `Canceled`. The record itself is shared with the client ([`jisu_client::call`]);
//! what the server adds is [`ServerCall`].
use std::{
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use http::{Request, Response};
use http_body::Body;
use jisu_client::{
    call::{CallObserver, CallRecord, MeteredBody, MeteredFuture, MeteredRequest},
    children::{Child, ChildKind, Children, InCall},
    metrics::code_label,
};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use opentelemetry::{
    KeyValue,
    trace::{SpanId, TraceContextExt as _},
};
use opentelemetry_sdk::trace::SpanData;

use crate::{
    api::{self, CallType},
    telemetry::{
        debug::DebugState,
        metrics::{Metrics, Side},
        otel,
        otlp::Attributes,
        recent::{self, SpanRecord, TraceRecord},
        rpcz::MethodWindow,
    },
    transport::Peer,
};

/// Which calls are kept after the fact: errors with these codes and calls at least this
/// slow (see [`crate::config::TracingSettings`]) are exported even when head sampling
/// dropped them, and go to the in-memory store with a sample of the rest.
#[derive(Debug, Clone)]
pub struct KeepPolicy {
    codes: [bool; 17],
    slow: Option<Duration>,
    /// Successful calls whose trace id's low 64 bits fall under this are kept in the
    /// in-memory store as a sample (by trace id, so every process keeps the same ones).
    sample_below: u64,
}

/// The policy, where kept calls go, and the `jisu_traces_kept_total{reason}` series
/// (registered once).
#[derive(Debug)]
struct Keeping {
    policy: KeepPolicy,
    head: metrics::Counter,
    error: metrics::Counter,
    slow: metrics::Counter,
    debug: DebugState,
}

impl KeepPolicy {
    pub fn new(settings: &crate::config::TracingSettings, sample_ratio: f64) -> Self {
        let mut codes = [false; 17];
        for (code, label) in jisu_client::metrics::CODES {
            codes[code as usize] = settings.keep_codes.iter().any(|c| c == label);
        }
        Self {
            codes,
            slow: (settings.slow_call_ms > 0).then(|| Duration::from_millis(settings.slow_call_ms)),
            sample_below: (sample_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
        }
    }

    fn keeps_code(&self, code: Code) -> bool {
        self.codes[code as usize]
    }

    /// Why a call is kept whatever head sampling said, if it is: its own code, a call it
    /// made that failed that way (so both sides of a failed call chain are kept), or its
    /// duration.
    fn reason(&self, code: Code, took: Duration, children: &[Child]) -> Option<&'static str> {
        let callee_failed = children
            .iter()
            .any(|c| c.code().is_some_and(|c| self.keeps_code(c)));
        if self.keeps_code(code) || callee_failed {
            Some("error")
        } else if self.slow.is_some_and(|slow| took >= slow) {
            Some("slow")
        } else {
            None
        }
    }

    fn samples(&self, trace_id: opentelemetry::trace::TraceId) -> bool {
        let bytes = trace_id.to_bytes();
        let low = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
        self.sample_below > 0 && low <= self.sample_below
    }
}

impl Keeping {
    fn counter(&self, reason: &str) -> &metrics::Counter {
        match reason {
            "error" => &self.error,
            "slow" => &self.slow,
            _ => &self.head,
        }
    }
}

impl Default for KeepPolicy {
    fn default() -> Self {
        let settings = crate::config::Settings::default();
        Self::new(&settings.tracing, settings.debug.sample_ratio)
    }
}

/// The server's part of a call's record: the trace id header, the in-flight gauge, the
/// last minute's per-method statistics, and the call's spans — built from the record
/// when the call ends, exported when head sampling chose the call or its outcome keeps it
/// (an error, a slow call), kept in memory when its outcome or the in-memory sample does.
/// No span object exists while the call runs.
#[derive(Debug)]
pub struct ServerCall {
    peer: Option<Arc<Peer>>,
    metrics: Metrics,
    keep: Arc<Keeping>,
    window: Arc<MethodWindow>,
    /// The call's parent span and method names.
    ids: Ids,
    /// The call's span context (decided at the start) and the work inside it (store
    /// operations, calls to other services).
    children: Arc<Children>,
    /// The status message of a failed call.
    message: Option<String>,
}

/// What a kept call needs of its span that the record does not hold already (its span
/// context is the record's: [`Children::trace`]).
#[derive(Debug)]
struct Ids {
    parent: Option<SpanId>,
    /// The method's position in [`api::served_index`]'s tables (`None`: unknown).
    index: Option<usize>,
    service: &'static str,
    method: &'static str,
}

impl Ids {
    /// `rpc.system`, `rpc.service` and `rpc.method`: the same on each span of a method, so
    /// encoded once per process (looked up only for calls whose spans are built).
    fn attributes(&self) -> &'static Attributes {
        static TABLE: LazyLock<api::PerMethod<Attributes>> = LazyLock::new(|| {
            api::PerMethod::new(|m| {
                let (service, method) =
                    m.map_or((api::UNKNOWN, api::UNKNOWN), |m| (m.service, m.name));
                Attributes::new([
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                ])
            })
        });
        TABLE.at(self.index)
    }
}

impl CallObserver for ServerCall {
    fn response(&mut self, parts: &mut http::response::Parts) {
        if let Some(mut id) = header_of(self.children.trace()) {
            // Unique per response: never worth a slot in the HPACK dynamic table, where
            // it would push out the headers every response repeats.
            id.set_sensitive(true);
            parts.headers.insert(TRACE_ID, id);
        }
    }

    fn status(&mut self, code: Code, headers: &http::HeaderMap) {
        if code != Code::Ok {
            self.message = tonic::Status::from_header_map(headers)
                .map(|s| recent::bounded(s.message().to_owned()));
        }
    }

    /// No `tracing` span: the SERVER span is built from the record (see `finished`).
    fn sampled(&self) -> bool {
        false
    }

    /// The end of the call decides what its spans become: exported when head sampling
    /// chose it or its outcome keeps it (an error, a slow call), kept in memory when its
    /// outcome or the in-memory sample keeps it, else nothing (nothing was built).
    fn finished(&mut self, code: Code, start: Instant, took: Duration) {
        self.metrics.in_flight().decrement(1.0);
        self.window.record(code, start + took, took);
        let ids = &self.ids;
        let context = self.children.trace();
        let exporting = otel::exporting();
        let sampled = context.is_sampled();
        let work = self.children.take();
        let policy = &self.keep.policy;
        let kept = policy.reason(code, took, &work.children);
        let export = exporting && (sampled || kept.is_some());
        let memory = kept.or_else(|| policy.samples(context.trace_id()).then_some("sample"));
        if export || memory.is_some() {
            // A trace that can be found (exported, or kept here): the latency bucket's
            // exemplar.
            self.metrics
                .exemplars()
                .record(ids.index, context.trace_id(), took);
        }
        // Why the spans exist: the head sample (the caller's or the sampler's choice) when
        // exported as such, else why the outcome kept it.
        let reason = match (export && sampled, kept.or(memory)) {
            (true, _) => "head",
            (false, Some(reason)) => reason,
            (false, None) => return,
        };
        let call = KeptCall {
            ids,
            peer: self.peer.as_deref().map(Peer::span_attributes),
            context,
            code,
            start,
            took,
            attributes: self.attributes(code, reason, work.subject, work.authz),
            child_ids: work
                .children
                .iter()
                .map(|c| match &c.what {
                    ChildKind::Call { span_id, .. } => SpanId::from_bytes(*span_id),
                    ChildKind::Store { .. } => jisu_client::children::new_span_id(),
                })
                .collect(),
            children: work.children,
            dropped: work.dropped,
        };
        if export && (call.export() || sampled) {
            self.keep.counter(reason).increment(1);
        }
        if let Some(memory) = memory {
            self.keep
                .debug
                .recent
                .insert(call.record(memory, self.message.as_deref()));
        }
    }
}

/// A call whose spans are built (exported or kept in memory), with everything they are
/// built from.
struct KeptCall<'a> {
    ids: &'a Ids,
    /// The connection's attributes (none for a call without a peer: tests' in-process calls).
    peer: Option<&'a Attributes>,
    context: &'a opentelemetry::trace::SpanContext,
    code: Code,
    start: Instant,
    took: Duration,
    /// The SERVER span's own attributes, after its method's (`ids`) and its connection's.
    attributes: Vec<KeyValue>,
    children: Vec<Child>,
    /// The children's span ids: a call's is the one it was propagated with.
    child_ids: Vec<SpanId>,
    dropped: u32,
}

/// The OTel attributes of a child span: the store's `db.*`, or a call's RPC attributes.
fn child_attributes(child: &Child) -> Vec<KeyValue> {
    match &child.what {
        ChildKind::Store {
            system, operation, ..
        } => vec![
            KeyValue::new("db.system.name", *system),
            KeyValue::new("db.operation.name", *operation),
        ],
        ChildKind::Call {
            service,
            method,
            server,
            port,
            code,
            ..
        } => {
            let mut a = vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", *service),
                KeyValue::new("rpc.method", *method),
                KeyValue::new("rpc.grpc.status_code", *code as i64),
                KeyValue::new("server.address", server.to_string()),
            ];
            if let Some(p) = port {
                a.push(KeyValue::new("server.port", i64::from(*p)));
            }
            a
        }
    }
}

/// A child's failure: a call's code label, `ERROR` for a store failure; `None` for
/// success (status `OK` in memory, unset in OTLP).
fn child_error(child: &Child) -> Option<&'static str> {
    match &child.what {
        ChildKind::Store { failed: true, .. } => Some("ERROR"),
        ChildKind::Store { .. } => None,
        ChildKind::Call { code: Code::Ok, .. } => None,
        ChildKind::Call { code, .. } => Some(code_label(*code)),
    }
}

/// A child span's name in pieces, as [`Child::name`] formats it.
fn child_name(child: &Child) -> [&str; 3] {
    match &child.what {
        ChildKind::Store { operation, .. } => ["store ", operation, ""],
        ChildKind::Call {
            service, method, ..
        } => [service, "/", method],
    }
}

/// Attributes as the in-memory record shows them.
fn strings(attributes: Vec<KeyValue>) -> Vec<(String, String)> {
    attributes
        .into_iter()
        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}

impl ServerCall {
    /// The SERVER span's attributes of this call (its method's and connection's are encoded
    /// once, see [`KeptCall::server_attributes`]): status, why it was kept, caller.
    fn attributes(
        &self,
        code: Code,
        reason: &'static str,
        subject: Option<Arc<str>>,
        authz: Option<(bool, Arc<str>)>,
    ) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(6);
        a.extend([
            KeyValue::new("rpc.grpc.status_code", code as i64),
            KeyValue::new("jisu.sampled_by", reason),
        ]);
        if let Some(subject) = subject {
            a.push(KeyValue::new(
                "enduser.id",
                recent::bounded(String::from(&*subject)),
            ));
        }
        if let Some((allowed, rule)) = authz {
            a.push(KeyValue::new(
                "jisu.authz.decision",
                if allowed { "allow" } else { "deny" },
            ));
            a.push(KeyValue::new(
                "jisu.authz.rule",
                opentelemetry::StringValue::from(rule),
            ));
        }
        if let Some(m) = &self.message {
            a.push(KeyValue::new("rpc.grpc.status_message", m.clone()));
        }
        a
    }
}

impl KeptCall<'_> {
    fn name(&self) -> String {
        format!("{}/{}", self.ids.service, self.ids.method)
    }

    /// All the SERVER span's attributes: RPC, peer, status, why it was kept, caller.
    fn server_attributes(&self) -> Vec<KeyValue> {
        let peer = self.peer.map_or(&[][..], |p| &p.values);
        let method = &self.ids.attributes().values;
        let mut all = Vec::with_capacity(method.len() + peer.len() + self.attributes.len());
        all.extend_from_slice(method);
        all.extend_from_slice(peer);
        all.extend_from_slice(&self.attributes);
        all
    }

    /// The call as kept in memory: its SERVER span and the spans inside it.
    fn record(self, kept_by: &'static str, message: Option<&str>) -> TraceRecord {
        let micros = |d: Duration| d.as_micros() as u64;
        let ids = self.ids;
        let server_id = self.context.span_id().to_string();
        let name = self.name();
        let attributes = strings(self.server_attributes());
        let mut spans = Vec::with_capacity(self.children.len() + 1);
        spans.push(SpanRecord {
            span_id: server_id.clone(),
            parent_span_id: ids.parent.map(|p| p.to_string()),
            name: name.clone(),
            kind: "server".into(),
            offset_micros: 0,
            duration_micros: micros(self.took),
            status: code_label(self.code).to_owned(),
            attributes,
        });
        for (child, id) in self.children.iter().zip(&self.child_ids) {
            spans.push(SpanRecord {
                span_id: id.to_string(),
                parent_span_id: Some(server_id.clone()),
                name: child.name(),
                kind: match child.what {
                    ChildKind::Store { .. } => "internal",
                    ChildKind::Call { .. } => "client",
                }
                .into(),
                offset_micros: micros(child.start.saturating_duration_since(self.start)),
                duration_micros: micros(child.took),
                status: child_error(child).unwrap_or("OK").to_owned(),
                attributes: strings(child_attributes(child)),
            });
        }
        let started = SystemTime::now() - self.took;
        TraceRecord {
            trace_id: self.context.trace_id().to_string(),
            kept_by: kept_by.into(),
            method: name,
            code: code_label(self.code).to_owned(),
            message: message.unwrap_or_default().to_owned(),
            start_unix_nanos: started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            duration_micros: micros(self.took),
            spans,
            dropped_spans: self.dropped,
        }
    }

    /// Queues the call's spans for export, encoded where the pipeline takes them so,
    /// else as `SpanData`; whether the SERVER span was queued.
    fn export(&self) -> bool {
        use crate::telemetry::otlp::{Kind, Span};
        use opentelemetry::trace::TraceState;
        if !otel::encodes() {
            return otel::keep(self.span_data());
        }
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let c = self.context;
        let trace_state = (c.trace_state() != &TraceState::NONE).then(|| c.trace_state().header());
        let trace_state = trace_state.as_deref().unwrap_or_default();
        let end = SystemTime::now();
        let started = end - self.took;
        let shared = [
            &*self.ids.attributes().encoded,
            self.peer.map_or(&[][..], |p| &p.encoded),
        ];
        let server = Span {
            trace_id: c.trace_id().to_bytes(),
            span_id: c.span_id().to_bytes(),
            trace_state,
            parent: self.ids.parent.map(|p| p.to_bytes()),
            parent_is_remote: self.ids.parent.is_some(),
            name: [self.ids.service, "/", self.ids.method],
            kind: Kind::Server,
            start_unix_nanos: nanos(started),
            end_unix_nanos: nanos(end),
            encoded_attributes: &shared,
            attributes: &self.attributes,
            error: (self.code != Code::Ok).then(|| code_label(self.code)),
        };
        let queued = otel::keep_encoded(&server);
        for (child, id) in self.children.iter().zip(&self.child_ids) {
            let start = started + child.start.saturating_duration_since(self.start);
            let attributes = child_attributes(child);
            let span = Span {
                span_id: id.to_bytes(),
                parent: Some(c.span_id().to_bytes()),
                parent_is_remote: false,
                name: child_name(child),
                kind: match child.what {
                    ChildKind::Store { .. } => Kind::Internal,
                    ChildKind::Call { .. } => Kind::Client,
                },
                start_unix_nanos: nanos(start),
                end_unix_nanos: nanos(start + child.took),
                encoded_attributes: &[],
                attributes: &attributes,
                error: child_error(child),
                ..server
            };
            otel::keep_encoded(&span);
        }
        queued
    }

    /// The spans of the call, built from what the record knows: the SERVER span with its
    /// ids (the trace id the caller got in `x-trace-id`), times, RPC attributes, the
    /// status and why it exists (`jisu.sampled_by`: head, error, slow), and a child
    /// span for each piece of work inside it (store operations; calls to other services
    /// under the span id they were propagated with, so the callee's spans hang below).
    fn span_data(&self) -> Vec<SpanData> {
        use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags};
        let c = self.context;
        let context = |id: SpanId| {
            SpanContext::new(
                c.trace_id(),
                id,
                TraceFlags::SAMPLED,
                false,
                c.trace_state().clone(),
            )
        };
        let status = |failed: Option<String>| match failed {
            Some(label) => Status::error(label),
            None => Status::Unset,
        };
        let scope = opentelemetry::InstrumentationScope::builder(otel::SCOPE).build();
        let end = SystemTime::now();
        let started = end - self.took;
        let mut spans = Vec::with_capacity(self.children.len() + 1);
        spans.push(SpanData {
            span_context: context(c.span_id()),
            parent_span_id: self.ids.parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: self.ids.parent.is_some(),
            span_kind: SpanKind::Server,
            name: self.name().into(),
            start_time: started,
            end_time: end,
            attributes: self.server_attributes(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: status((self.code != Code::Ok).then(|| code_label(self.code).to_owned())),
            instrumentation_scope: scope.clone(),
        });
        for (child, id) in self.children.iter().zip(&self.child_ids) {
            let start = started + child.start.saturating_duration_since(self.start);
            spans.push(SpanData {
                span_context: context(*id),
                parent_span_id: c.span_id(),
                parent_span_is_remote: false,
                span_kind: match child.what {
                    ChildKind::Store { .. } => SpanKind::Internal,
                    ChildKind::Call { .. } => SpanKind::Client,
                },
                name: child.name().into(),
                start_time: start,
                end_time: start + child.took,
                attributes: child_attributes(child),
                dropped_attributes_count: 0,
                events: Default::default(),
                links: Default::default(),
                status: status(child_error(child).map(str::to_owned)),
                instrumentation_scope: scope.clone(),
            });
        }
        spans
    }
}

// Header names built once: a `&str` name is parsed (and its case checked) at every lookup.
const TRACE_ID: http::HeaderName = http::HeaderName::from_static(api::TRACE_ID);
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");

/// The SERVER span context of a call, decided before anything else happens: the
/// caller's trace continued (W3C `traceparent`) or a new one, a new span id, and the
/// sampler's decision. No span object is created: a call that is neither sampled nor
/// kept costs two random numbers. Also the caller's span id, and its context when it sent
/// one (for baggage).
fn trace_context<B>(
    req: &Request<B>,
) -> (
    opentelemetry::trace::SpanContext,
    Option<SpanId>,
    Option<opentelemetry::Context>,
) {
    let path = req.uri().path();
    // Most calls carry no context: skip the propagator (a global lock) for them.
    let headers = req.headers();
    // One pass over the few names a request carries: cheaper than two hashed lookups
    // that miss.
    let parent = headers
        .keys()
        .any(|name| name == TRACEPARENT || name == BAGGAGE)
        .then(|| otel::extract(headers));
    let remote = parent
        .as_ref()
        .map(|p| p.span().span_context().clone())
        .filter(|sc| sc.is_valid());
    let trace_id = remote
        .as_ref()
        .map_or_else(jisu_client::children::new_trace_id, |sc| sc.trace_id());
    let context = otel::sample(
        remote.as_ref().and(parent.as_ref()),
        trace_id,
        jisu_client::children::new_span_id(),
        path.trim_start_matches('/'),
    );
    (context, remote.map(|sc| sc.span_id()), parent)
}

/// The trace id as `x-trace-id` sends it: 32 lowercase hex digits, formatted in place.
fn header_of(sc: &opentelemetry::trace::SpanContext) -> Option<http::HeaderValue> {
    if !sc.is_valid() {
        return None;
    }
    let mut hex = [0u8; 32];
    hex::encode_to_slice(sc.trace_id().to_bytes(), &mut hex).ok()?;
    http::HeaderValue::from_bytes(&hex).ok()
}

#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
    keep: Arc<Keeping>,
}

impl MetricsLayer {
    pub fn new(metrics: Metrics, policy: KeepPolicy, debug: DebugState) -> Self {
        let keep = Arc::new(Keeping {
            policy,
            head: metrics.traces_kept("head"),
            error: metrics.traces_kept("error"),
            slow: metrics.traces_kept("slow"),
            debug,
        });
        Self { metrics, keep }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
            keep: self.keep.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
    keep: Arc<Keeping>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MetricsService<S>
where
    S: Service<Request<MeteredRequest<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<MeteredBody<InCall<ResBody>, ServerCall>>;
    type Error = S::Error;
    type Future = MeteredFuture<InCall<S::Future>, ServerCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // One lookup of the path for both per-method tables.
        let index = api::served_index(req.uri().path());
        let method = self.metrics.method_at(index).clone();
        method.started.increment(1);
        // Unary and server-streaming calls carry exactly one request message; the
        // messages of client and bidi streams are counted as their frames arrive.
        let req = req.map(|body| match method.call_type {
            CallType::Unary | CallType::ServerStream => {
                method.msg_received.increment(1);
                MeteredRequest::new(body, None)
            }
            CallType::ClientStream | CallType::BidiStream => {
                MeteredRequest::new(body, Some(method.msg_received.clone()))
            }
        });
        self.metrics.in_flight().increment(1.0);
        let window = self.keep.debug.rpcz.at(index).clone();
        let (context, parent, propagated) = trace_context(&req);
        let ids = Ids {
            parent,
            index,
            service: method.service,
            method: method.name,
        };
        let peer = req.extensions().get::<Arc<Peer>>().cloned();
        let children = Arc::new(Children::new(context, propagated));
        let inner = jisu_client::children::enter(&children, || self.inner.call(req));
        let start = Instant::now();
        MeteredFuture::new(
            InCall::new(inner, children.clone()),
            CallRecord {
                method: Some(method),
                side: Side::Server,
                start,
                span: tracing::Span::none(),
                observer: ServerCall {
                    peer,
                    metrics: self.metrics.clone(),
                    keep: self.keep.clone(),
                    window,
                    ids,
                    children,
                    message: None,
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceId;

    fn policy(slow_ms: u64, ratio: f64) -> KeepPolicy {
        let settings = crate::config::TracingSettings {
            slow_call_ms: slow_ms,
            ..Default::default()
        };
        KeepPolicy::new(&settings, ratio)
    }

    fn called(code: Code) -> Vec<Child> {
        vec![Child {
            what: ChildKind::Call {
                service: "jisucloud.v1.UserService",
                method: "GetUser",
                span_id: [1; 8],
                server: "users".into(),
                port: None,
                code,
            },
            start: Instant::now(),
            took: Duration::ZERO,
        }]
    }

    #[test]
    fn kept_for_its_code_a_failed_callee_or_its_duration() {
        let p = policy(1000, 0.0);
        let none: Vec<Child> = Vec::new();
        let fast = Duration::from_millis(999);
        assert_eq!(p.reason(Code::Internal, fast, &none), Some("error"));
        assert_eq!(p.reason(Code::PermissionDenied, fast, &none), Some("error"));
        // A miss and the caller's own cancel are not failures to diagnose.
        assert_eq!(p.reason(Code::NotFound, fast, &none), None);
        assert_eq!(p.reason(Code::Cancelled, fast, &none), None);
        assert_eq!(p.reason(Code::Ok, fast, &none), None);
        // A call it made failed: kept as an error, whatever it answered itself.
        assert_eq!(
            p.reason(Code::Ok, fast, &called(Code::Unavailable)),
            Some("error")
        );
        assert_eq!(p.reason(Code::Ok, fast, &called(Code::NotFound)), None);
        // Slow from the threshold on; 0 turns it off.
        assert_eq!(
            p.reason(Code::Ok, Duration::from_millis(1000), &none),
            Some("slow")
        );
        assert_eq!(
            policy(0, 0.0).reason(Code::Ok, Duration::from_secs(60), &none),
            None
        );
    }

    #[test]
    fn x_trace_id_is_the_trace_id_in_lowercase_hex() {
        use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
        let id = TraceId::from(0x0123_4567_89ab_cdef_0011_2233_4455_66ffu128);
        let sc = SpanContext::new(
            id,
            SpanId::from(7u64),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        let header = header_of(&sc).expect("a valid context has a header");
        assert_eq!(header.to_str().unwrap(), id.to_string());
        assert_eq!(header.to_str().unwrap(), "0123456789abcdef00112233445566ff");
        assert!(header_of(&SpanContext::empty_context()).is_none());
    }

    #[test]
    fn the_sample_is_decided_by_trace_id() {
        let low = TraceId::from(1u128);
        let high = TraceId::from(u128::from(u64::MAX));
        assert!(!policy(0, 0.0).samples(low));
        assert!(policy(0, 1.0).samples(high));
        let half = policy(0, 0.5);
        assert!(half.samples(low));
        assert!(!half.samples(high));
        // The same id gets the same answer in every process.
        assert_eq!(half.samples(low), policy(0, 0.5).samples(low));
    }
}
