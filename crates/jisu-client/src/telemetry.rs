//! The client's side of observability: a CLIENT span per call, the W3C context injected
//! into the request headers so the server continues the trace, and the `grpc_client_*`
//! twins of the server metrics when the client is given [`ClientMetrics`]. A call made
//! while serving another (orders asking users) continues that call's context under a new
//! span id and becomes a child in its record (the server builds the CLIENT span from it
//! if the call is exported or kept); any other call gets a `tracing` span.
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{Request, Response};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use jisu_api::{self as api, CallType};
use opentelemetry::propagation::Injector;

use crate::{
    call::{CallObserver, CallRecord, MeteredBody, MeteredFuture, MeteredRequest},
    children::{self, Child, ChildKind, Children},
    metrics::{ClientMetrics, MethodMetrics, Side},
};

/// The client's part of a call's record: when the call is made while serving another
/// (orders asking users), it becomes a child of that call, under the span id the callee
/// was told in `traceparent`, so a call kept after the fact shows the whole chain.
#[derive(Debug)]
pub struct ClientCall {
    parent: Option<Arc<Children>>,
    service: &'static str,
    method: &'static str,
    span_id: [u8; 8],
    server: ServerAddress,
    sampled: bool,
}

impl CallObserver for ClientCall {
    fn sampled(&self) -> bool {
        self.sampled
    }

    fn finished(&mut self, code: tonic::Code, start: Instant, took: std::time::Duration) {
        if let Some(parent) = &self.parent {
            parent.push(Child {
                what: ChildKind::Call {
                    service: self.service,
                    method: self.method,
                    span_id: self.span_id,
                    server: self.server.host.clone(),
                    port: self.server.port,
                    code,
                },
                start,
                took,
            });
        }
    }
}

/// Writes W3C trace context (and baggage) into outgoing headers, with whatever
/// propagator the process installed.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

fn inject(cx: &opentelemetry::Context, headers: &mut http::HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers))
    });
}

/// The server a client talks to, for the span's `server.address` / `server.port`.
#[derive(Debug, Clone, Default)]
pub struct ServerAddress {
    pub host: Arc<str>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct ClientTelemetryLayer {
    metrics: Option<ClientMetrics>,
    peer: ServerAddress,
}

impl ClientTelemetryLayer {
    pub fn new(metrics: Option<ClientMetrics>, peer: ServerAddress) -> Self {
        Self { metrics, peer }
    }
}

impl<S> Layer<S> for ClientTelemetryLayer {
    type Service = ClientTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTelemetry {
            inner,
            metrics: self.metrics.clone(),
            peer: self.peer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    metrics: Option<ClientMetrics>,
    peer: ServerAddress,
}

impl<S> ClientTelemetry<S> {
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn client_span<B>(req: &Request<B>, peer: &ServerAddress) -> tracing::Span {
    let path = req.uri().path();
    let (service, method) = api::split_path(path).unwrap_or(("unknown", "unknown"));
    tracing::info_span!(
        "rpc.client",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = &*peer.host,
        server.port = peer.port,
    )
}

impl<S, ResBody> Service<Request<tonic::body::Body>> for ClientTelemetry<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<MeteredBody<ResBody, ClientCall>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future, ClientCall>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        let method: Option<Arc<MethodMetrics>> = self
            .metrics
            .as_ref()
            .map(|m| m.method(req.uri().path()).clone());
        if let Some(method) = &method {
            method.started.increment(1);
            match method.call_type {
                CallType::Unary | CallType::ServerStream => method.msg_sent.increment(1),
                // Streamed requests are counted frame by frame as they leave.
                CallType::ClientStream | CallType::BidiStream => {
                    let counter = method.msg_sent.clone();
                    req = req.map(|body| {
                        tonic::body::Body::new(MeteredRequest::new(body, Some(counter)))
                    });
                }
            }
        }
        let parent = children::current();
        // Inside a served call, the call's own context is continued under a new span id
        // and the CLIENT span is built from the call's record if the call is exported or
        // kept; no span object per call. Outside one, a `tracing` span as usual.
        let (span, span_id, sampled) = match &parent {
            Some(call) => {
                let span_id = children::new_span_id();
                inject(&call.outgoing(span_id), req.headers_mut());
                (tracing::Span::none(), span_id.to_bytes(), false)
            }
            None => {
                let span = client_span(&req, &self.peer);
                let cx = span.context();
                inject(&cx, req.headers_mut());
                use opentelemetry::trace::TraceContextExt as _;
                let s = cx.span();
                let sc = s.span_context();
                let (id, sampled) = (sc.span_id().to_bytes(), sc.is_sampled());
                (span, id, sampled)
            }
        };
        let (service, name) = match &method {
            Some(m) => (m.service, m.name),
            None => api::served_method(req.uri().path())
                .map_or(("unknown", "unknown"), |m| (m.service, m.name)),
        };
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        MeteredFuture::new(
            inner,
            CallRecord {
                method,
                side: Side::Client,
                start: Instant::now(),
                span,
                observer: ClientCall {
                    parent,
                    service,
                    method: name,
                    span_id,
                    server: self.peer.clone(),
                    sampled,
                },
            },
        )
    }
}
