//! The servers the benchmark suite compares Jisu with, built from the same handlers:
//! - **bare**: UserService and OrderService over plaintext h2, no auth, no telemetry;
//! - **bare-tls**: the same over Jisu's own mutual-TLS listener (the same acceptor and
//!   rustls configuration as `jisu serve`), still no auth and no telemetry: the full
//!   stack minus the middleware, so the cost of TLS and the cost of the rest show apart;
//! - **rest**: GetUser, BatchGetUsers and a ListUsers page as REST/JSON over HTTPS/1.1
//!   (axum), with the same mutual TLS and the same JWT check, calling the very same
//!   `UserService` handlers;
//! - **otlp-sink**: an OTLP/gRPC trace receiver that counts spans, so the full stack can
//!   export for real without a collector installed.
//!
//! None of this is reachable from `jisu serve`; `jisu bench-target` starts them.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;

use crate::{
    middleware::auth::authorize,
    pb::{
        BatchGetUsersRequest, GetUserRequest, ListUsersRequest,
        order_service_server::OrderServiceServer,
        user_service_server::{UserService, UserServiceServer},
    },
    security::jwt::TokenVerifier,
    service::{OrderApi, OrderEvents, UserApi, UserDirectory},
    store::Store,
};

/// The same handlers with nothing around them.
pub async fn serve_bare(listener: TcpListener, store: Arc<dyn Store>) -> std::io::Result<()> {
    let users = UserServiceServer::new(UserApi::new(store.clone()));
    let orders = OrderServiceServer::new(OrderApi::new(
        store,
        UserDirectory::Local,
        OrderEvents::new(metrics::Gauge::noop()),
    ));
    Server::builder()
        .add_service(users)
        .add_service(orders)
        .serve_with_incoming(incoming(listener))
        .await
        .map_err(std::io::Error::other)
}

/// The same handlers behind Jisu's own mutual-TLS listener, nothing else around them.
pub async fn serve_bare_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    store: Arc<dyn Store>,
) -> std::io::Result<()> {
    let users = UserServiceServer::new(UserApi::new(store.clone()));
    let orders = OrderServiceServer::new(OrderApi::new(
        store,
        UserDirectory::Local,
        OrderEvents::new(metrics::Gauge::noop()),
    ));
    let acceptor = Arc::new(parking_lot::RwLock::new(TlsAcceptor::from(tls)));
    let incoming = crate::transport::tls_incoming(
        listener,
        acceptor,
        std::time::Duration::from_secs(10),
        64,
        crate::telemetry::metrics::Metrics::new(),
    );
    Server::builder()
        .add_service(users)
        .add_service(orders)
        .serve_with_incoming(incoming)
        .await
        .map_err(std::io::Error::other)
}

/// Accepted connections with TCP_NODELAY, as Jisu's own listener sets it.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

const GET_USER_PATH: &str = "/jisucloud.v1.UserService/GetUser";
const BATCH_GET_USERS_PATH: &str = "/jisucloud.v1.UserService/BatchGetUsers";
const LIST_USERS_PATH: &str = "/jisucloud.v1.UserService/ListUsers";

#[derive(Clone)]
struct Rest {
    users: Arc<UserApi>,
    verifier: TokenVerifier,
    policy: crate::security::authz::PolicyHandle,
}

impl Rest {
    /// The very check the gRPC stack makes, for the method a route stands for, and the
    /// request the handler gets (with the caller's principal, as the auth layer passes
    /// it). No peer: the benchmark's tokens are not certificate-bound, so the check is
    /// the same.
    fn request<T>(
        &self,
        path: &str,
        headers: &HeaderMap,
        message: T,
    ) -> Result<tonic::Request<T>, (StatusCode, String)> {
        match authorize(&self.verifier, &self.policy, path, headers, None) {
            Ok(principal) => {
                let mut req = tonic::Request::new(message);
                if let Some(p) = principal {
                    req.extensions_mut().insert(p);
                }
                Ok(req)
            }
            Err((err, _)) => {
                let code = match err {
                    crate::Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                Err((code, err.to_string()))
            }
        }
    }
}

/// A handler's failure as an HTTP status and a JSON error.
fn rest_error(status: &tonic::Status) -> axum::response::Response {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(serde_json::json!({"error": status.message()}))).into_response()
}

async fn rest_get_user(
    State(rest): State<Rest>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    let req = match rest.request(GET_USER_PATH, &headers, GetUserRequest { user_id: id }) {
        Ok(req) => req,
        Err(refused) => return refused.into_response(),
    };
    match rest.users.get_user(req).await {
        Ok(user) => Json(user.into_inner()).into_response(),
        Err(status) => rest_error(&status),
    }
}

/// `POST /v1/users:batchGet` with `{"user_ids": [...]}`: BatchGetUsers as one JSON answer.
async fn rest_batch_get_users(
    State(rest): State<Rest>,
    headers: HeaderMap,
    Json(body): Json<BatchGetUsersRequest>,
) -> axum::response::Response {
    let req = match rest.request(BATCH_GET_USERS_PATH, &headers, body) {
        Ok(req) => req,
        Err(refused) => return refused.into_response(),
    };
    match rest.users.batch_get_users(req).await {
        Ok(users) => Json(users.into_inner()).into_response(),
        Err(status) => rest_error(&status),
    }
}

/// `GET /v1/users?page_size=N`: the ListUsers stream's first page as one JSON answer
/// (`{"users": [...]}`), as a REST API would page it.
async fn rest_list_users(
    State(rest): State<Rest>,
    Query(query): Query<ListUsersRequest>,
    headers: HeaderMap,
) -> axum::response::Response {
    use futures::StreamExt as _;
    let req = match rest.request(LIST_USERS_PATH, &headers, query) {
        Ok(req) => req,
        Err(refused) => return refused.into_response(),
    };
    let mut stream = match rest.users.list_users(req).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return rest_error(&status),
    };
    let mut users = Vec::new();
    while let Some(user) = stream.next().await {
        match user {
            Ok(user) => users.push(user),
            Err(status) => return rest_error(&status),
        }
    }
    Json(serde_json::json!({ "users": users })).into_response()
}

/// GetUser (`GET /v1/users/{id}`), BatchGetUsers (`POST /v1/users:batchGet`) and a page
/// of ListUsers (`GET /v1/users?page_size=N`) over HTTPS with client certificates
/// (HTTP/1.1, keep-alive).
pub async fn serve_rest(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    verifier: TokenVerifier,
    store: Arc<dyn Store>,
) -> std::io::Result<()> {
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let app = Router::new()
        .route("/v1/users/{id}", get(rest_get_user))
        .route("/v1/users:batchGet", post(rest_batch_get_users))
        .route("/v1/users", get(rest_list_users))
        .with_state(Rest {
            users: Arc::new(UserApi::new(store)),
            verifier,
            policy: crate::security::authz::PolicyHandle::new(
                crate::security::authz::Policy::builtin(&crate::telemetry::metrics::Metrics::new()),
            ),
        });
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

/// Counts the spans it receives, without decoding them.
///
/// A collector stands in for a machine elsewhere; this one shares the generator's core, so
/// what it costs per span is charged to the generator's timing. Decoding each request into
/// `ExportTraceServiceRequest` (a `Vec` and `String`s per span and attribute) cost bursts of
/// about a millisecond per batch of 512 spans on that core (BENCHMARKS.md, session 14):
/// [`SpanCount`] reads only the nesting down to the spans and skips their contents.
#[derive(Debug, Clone, Default)]
pub struct OtlpSink {
    pub spans: Arc<AtomicU64>,
}

/// `ExportTraceServiceRequest` read only as far as counting its spans: prost skips every
/// other field without allocating, and a span decodes to a zero-sized [`Skipped`] (a `Vec`
/// of those never allocates).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SpanCount {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpanCount>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpanCount {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpanCount>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpanCount {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Skipped>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Skipped {}

impl SpanCount {
    pub fn spans(&self) -> usize {
        self.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

impl tonic::server::NamedService for OtlpSink {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::UnaryService<SpanCount> for OtlpSink {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<SpanCount>) -> Self::Future {
        let n = request.get_ref().spans();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        std::future::ready(Ok(tonic::Response::new(
            ExportTraceServiceResponse::default(),
        )))
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for OtlpSink
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let sink = self.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT {
                return Ok(tonic::Status::unimplemented(format!(
                    "the OTLP sink answers only {EXPORT}"
                ))
                .into_http());
            }
            let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, SpanCount>::default();
            Ok(tonic::server::Grpc::new(codec).unary(sink, request).await)
        })
    }
}

/// Serves the sink until the process ends.
pub async fn serve_otlp_sink(listener: TcpListener, sink: OtlpSink) -> std::io::Result<()> {
    Server::builder()
        .add_service(sink)
        .serve_with_incoming(incoming(listener))
        .await
        .map_err(std::io::Error::other)
}

/// Binds a listener, returning it with its real address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span, span},
    };
    use prost::Message as _;

    fn span(i: u8) -> Span {
        let attribute = |k: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("v".repeat(i as usize))),
            }),
            ..Default::default()
        };
        Span {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            name: format!("span {i}"),
            attributes: vec![attribute("a"), attribute("b")],
            events: vec![span::Event {
                name: "event".into(),
                attributes: vec![attribute("c")],
                ..Default::default()
            }],
            links: vec![span::Link {
                trace_id: vec![9; 16],
                span_id: vec![9; 8],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The counting decode sees every span of every scope of every resource, and nothing
    /// else: the resources' and scopes' own fields, nested spans' events and links are
    /// skipped, not counted.
    #[test]
    fn the_sink_counts_spans_without_decoding_them() {
        let scope = |spans: std::ops::Range<u8>| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "jisu".into(),
                ..Default::default()
            }),
            spans: spans.map(span).collect(),
            schema_url: "s".into(),
        };
        let resource = |scopes: Vec<ScopeSpans>| ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: scopes,
            schema_url: "r".into(),
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                resource(vec![scope(0..3), scope(3..3), scope(3..10)]),
                resource(vec![]),
                resource(vec![scope(10..11)]),
            ],
        };
        let bytes = request.encode_to_vec();
        let count = SpanCount::decode(bytes.as_slice()).unwrap();
        assert_eq!(count.spans(), 11);
        // Truncated input is an error, not a count.
        assert!(SpanCount::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(SpanCount::decode(&[][..]).unwrap().spans(), 0);
    }

    /// Any other method is UNIMPLEMENTED, saying what the sink answers.
    #[tokio::test]
    async fn the_sink_answers_only_export() {
        use tonic::codegen::Service as _;
        let request = http::Request::builder()
            .uri("/opentelemetry.proto.collector.trace.v1.TraceService/Other")
            .body(tonic::body::Body::empty())
            .unwrap();
        let response = OtlpSink::default().call(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(status.message().contains(EXPORT), "{}", status.message());
    }
}
