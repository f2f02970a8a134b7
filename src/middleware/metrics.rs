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
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use http_body::Body;
use jisu_client::call::{CallObserver, CallRecord, MeteredBody, MeteredFuture, MeteredRequest};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::trace::SpanData;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    api::{self, CallType},
    telemetry::{
        metrics::{MethodMetrics, Metrics, Side, UNKNOWN},
        otel,
    },
    transport::Peer,
};

/// Which unsampled calls are exported anyway: errors with these codes, and calls at
/// least this slow (see [`crate::config::TracingSettings`]).
#[derive(Debug, Clone)]
pub struct KeepPolicy {
    codes: [bool; 17],
    slow: Option<std::time::Duration>,
}

/// The policy and its `jisu_traces_kept_total{reason}` series, registered once.
#[derive(Debug)]
struct Keeping {
    policy: KeepPolicy,
    head: metrics::Counter,
    error: metrics::Counter,
    slow: metrics::Counter,
}

impl KeepPolicy {
    pub fn new(settings: &crate::config::TracingSettings) -> Self {
        let mut codes = [false; 17];
        for (code, label) in jisu_client::metrics::CODES {
            codes[code as usize] = settings.keep_codes.iter().any(|c| c == label);
        }
        Self {
            codes,
            slow: (settings.slow_call_ms > 0)
                .then(|| std::time::Duration::from_millis(settings.slow_call_ms)),
        }
    }

    /// Why a call that head sampling dropped is kept, if it is.
    fn reason(&self, code: Code, took: std::time::Duration) -> Option<&'static str> {
        if self.codes[code as usize] {
            Some("error")
        } else if self.slow.is_some_and(|slow| took >= slow) {
            Some("slow")
        } else {
            None
        }
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
        Self::new(&crate::config::TracingSettings::default())
    }
}

/// The server's part of a call's record: the trace id header, the span's RPC attributes
/// (only when sampled), the in-flight gauge, and exporting an unsampled call after all
/// when its outcome says so (an error, a slow call).
#[derive(Debug)]
pub struct ServerCall {
    peer: Option<Arc<Peer>>,
    metrics: Metrics,
    keep: Arc<Keeping>,
    /// The span's ids and whether head sampling kept it, read once at the start (only
    /// while spans are exported).
    ids: Option<Ids>,
}

/// What an after-the-fact export needs of the call's span that the record does not
/// hold already (its method and times come from the record).
#[derive(Debug)]
struct Ids {
    context: opentelemetry::trace::SpanContext,
    parent: Option<opentelemetry::trace::SpanId>,
    service: &'static str,
    method: &'static str,
}

impl CallObserver for ServerCall {
    fn response(
        &mut self,
        parts: &mut http::response::Parts,
        span: &tracing::Span,
        method: Option<&MethodMetrics>,
    ) {
        let (id, sampled) = match &self.ids {
            Some(ids) => (header_of(&ids.context), ids.context.is_sampled()),
            None => trace_id(span),
        };
        if let Some(id) = id {
            parts.headers.insert(api::TRACE_ID, id);
        }
        if sampled {
            self.describe(span, method);
        }
    }

    fn finished(&mut self, code: Code, took: std::time::Duration) {
        self.metrics.in_flight().decrement(1.0);
        let Some(ids) = &self.ids else {
            return;
        };
        if ids.context.is_sampled() {
            self.keep.head.increment(1);
            return;
        }
        let Some(reason) = self.keep.policy.reason(code, took) else {
            return;
        };
        if otel::keep(self.span_data(ids, code, took, reason)) {
            self.keep.counter(reason).increment(1);
        }
    }
}

impl ServerCall {
    /// The SERVER span of a call head sampling dropped, rebuilt from what the record
    /// knows: its ids (the trace id the caller got in `x-trace-id`), times, RPC
    /// attributes, the status, and why it was kept (`jisu.sampled_by`).
    fn span_data(
        &self,
        ids: &Ids,
        code: Code,
        took: std::time::Duration,
        reason: &'static str,
    ) -> SpanData {
        use opentelemetry::{
            KeyValue,
            trace::{SpanContext, SpanKind, Status, TraceFlags},
        };
        let (service, method) = (ids.service, ids.method);
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
            KeyValue::new("rpc.grpc.status_code", code as i64),
            KeyValue::new("jisu.sampled_by", reason),
        ];
        if let Some(p) = &self.peer {
            attributes.push(KeyValue::new(
                "server.address",
                p.local_addr.ip().to_string(),
            ));
            attributes.push(KeyValue::new("server.port", i64::from(p.local_addr.port())));
            attributes.push(KeyValue::new(
                "network.peer.address",
                p.remote_addr.ip().to_string(),
            ));
            attributes.push(KeyValue::new("tls.client.identity", p.identity.clone()));
        }
        let c = &ids.context;
        SpanData {
            span_context: SpanContext::new(
                c.trace_id(),
                c.span_id(),
                TraceFlags::SAMPLED,
                false,
                c.trace_state().clone(),
            ),
            parent_span_id: ids.parent.unwrap_or(opentelemetry::trace::SpanId::INVALID),
            parent_span_is_remote: ids.parent.is_some(),
            span_kind: SpanKind::Server,
            name: format!("{service}/{method}").into(),
            start_time: std::time::SystemTime::now() - took,
            end_time: std::time::SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: if code == Code::Ok {
                Status::Unset
            } else {
                Status::error(jisu_client::metrics::code_label(code))
            },
            instrumentation_scope: opentelemetry::InstrumentationScope::builder("jisu").build(),
        }
    }

    /// Records the RPC attributes of a sampled SERVER span.
    fn describe(&self, span: &tracing::Span, method: Option<&MethodMetrics>) {
        let (service, name) = method.map_or((UNKNOWN, UNKNOWN), |m| (m.service, m.name));
        span.record("rpc.system", "grpc");
        span.record("rpc.service", service);
        span.record("rpc.method", name);
        if let Some(p) = &self.peer {
            span.record("server.address", tracing::field::display(p.local_addr.ip()));
            span.record("server.port", p.local_addr.port());
            span.record(
                "network.peer.address",
                tracing::field::display(p.remote_addr.ip()),
            );
            span.record("tls.client.identity", p.identity.as_str());
        }
    }
}

/// The SERVER span of one call. Only its name and kind are set here: the OTel RPC
/// semantic-convention attributes are recorded when the call ends, and only when the span
/// is sampled (see [`CallRecord::describe`]), because converting a dozen attributes for
/// every call that is never exported was the largest cost of tracing.
fn server_span<B>(req: &Request<B>) -> (tracing::Span, Option<opentelemetry::trace::SpanId>) {
    let path = req.uri().path();
    let span = tracing::info_span!(
        "rpc",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = tracing::field::Empty,
        rpc.service = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        network.peer.address = tracing::field::Empty,
        tls.client.identity = tracing::field::Empty,
        enduser.id = tracing::field::Empty,
        jisu.authz.decision = tracing::field::Empty,
        jisu.authz.rule = tracing::field::Empty,
    );
    // Most calls carry no context: skip the propagator (a global lock) for them.
    let headers = req.headers();
    let mut parent_id = None;
    if headers.contains_key("traceparent") || headers.contains_key("baggage") {
        let parent = otel::extract(headers);
        let parent_span = parent.span().span_context().clone();
        if parent_span.is_valid() {
            parent_id = Some(parent_span.span_id());
            let _ = span.set_parent(parent);
        }
    }
    (span, parent_id)
}

/// The trace id of a span as 32 hex digits (when it has one) and whether it is sampled.
fn trace_id(span: &tracing::Span) -> (Option<http::HeaderValue>, bool) {
    let sc = span_context(span);
    (header_of(&sc), sc.is_sampled())
}

fn span_context(span: &tracing::Span) -> opentelemetry::trace::SpanContext {
    span.context().span().span_context().clone()
}

fn header_of(sc: &opentelemetry::trace::SpanContext) -> Option<http::HeaderValue> {
    sc.is_valid()
        .then(|| http::HeaderValue::from_str(&sc.trace_id().to_string()).ok())
        .flatten()
}

#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
    keep: Arc<Keeping>,
}

impl MetricsLayer {
    pub fn new(metrics: Metrics, policy: KeepPolicy) -> Self {
        let keep = Arc::new(Keeping {
            policy,
            head: metrics.traces_kept("head"),
            error: metrics.traces_kept("error"),
            slow: metrics.traces_kept("slow"),
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
    type Response = Response<MeteredBody<ResBody, ServerCall>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, ServerCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = self.metrics.method(req.uri().path()).clone();
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
        let (span, parent) = server_span(&req);
        // Only while spans are exported: the ids an after-the-fact export needs.
        let ids = otel::exporting().then(|| Ids {
            context: span_context(&span),
            parent,
            service: method.service,
            method: method.name,
        });
        let peer = req.extensions().get::<Arc<Peer>>().cloned();
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        MeteredFuture::new(
            inner,
            CallRecord {
                method: Some(method),
                side: Side::Server,
                start: Instant::now(),
                span,
                observer: ServerCall {
                    peer,
                    metrics: self.metrics.clone(),
                    keep: self.keep.clone(),
                    ids,
                },
            },
        )
    }
}
