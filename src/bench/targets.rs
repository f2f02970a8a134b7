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
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
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

/// Counts the spans it receives.
#[derive(Debug, Clone, Default)]
pub struct OtlpSink {
    pub spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for OtlpSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the sink until the process ends.
pub async fn serve_otlp_sink(listener: TcpListener, sink: OtlpSink) -> std::io::Result<()> {
    Server::builder()
        .add_service(TraceServiceServer::new(sink))
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
