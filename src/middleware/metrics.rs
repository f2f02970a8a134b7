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
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    api::{self, CallType},
    telemetry::{
        metrics::{MethodMetrics, Metrics, Side, UNKNOWN},
        otel,
    },
    transport::Peer,
};

/// The server's part of a call's record: the trace id header, the span's RPC attributes
/// (only when sampled) and the in-flight gauge.
#[derive(Debug)]
pub struct ServerCall {
    peer: Option<Arc<Peer>>,
    metrics: Metrics,
}

impl CallObserver for ServerCall {
    fn response(
        &mut self,
        parts: &mut http::response::Parts,
        span: &tracing::Span,
        method: Option<&MethodMetrics>,
    ) {
        let (id, sampled) = trace_id(span);
        if let Some(id) = id {
            parts.headers.insert(api::TRACE_ID, id);
        }
        if sampled {
            self.describe(span, method);
        }
    }

    fn finished(&mut self, _code: Code) {
        self.metrics.in_flight().decrement(1.0);
    }
}

impl ServerCall {
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
fn server_span<B>(req: &Request<B>) -> tracing::Span {
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
    if headers.contains_key("traceparent") || headers.contains_key("baggage") {
        let parent = otel::extract(headers);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// The trace id of a span as 32 hex digits (when it has one) and whether it is sampled.
fn trace_id(span: &tracing::Span) -> (Option<http::HeaderValue>, bool) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    let id = sc
        .is_valid()
        .then(|| http::HeaderValue::from_str(&sc.trace_id().to_string()).ok())
        .flatten();
    (id, sc.is_sampled())
}

#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
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
        let span = server_span(&req);
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
                },
            },
        )
    }
}
