//! The servers the benchmark suite compares Jisu with, built from the same handlers:
//! - **bare**: UserService and OrderService over plaintext h2, no auth, no telemetry;
//! - **bare-tls**: the same over Jisu's own mutual-TLS listener (the same acceptor and
//!   rustls configuration as `jisu serve`), still no auth and no telemetry: the full
//!   stack minus the middleware, so the cost of TLS and the cost of the rest show apart;
//! - **rest**: GetUser as REST/JSON over HTTPS/1.1 (axum), with the same mutual TLS and the
//!   same JWT check, calling the very same `UserService` handler;
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
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
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
        GetUserRequest,
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

#[derive(Clone)]
struct Rest {
    users: Arc<UserApi>,
    verifier: TokenVerifier,
    policy: crate::security::authz::PolicyHandle,
}

async fn rest_get_user(
    State(rest): State<Rest>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    // The very check the gRPC stack makes, for the method this route stands for.
    // (No peer: the benchmark's tokens are not certificate-bound, so the check is the same.)
    if let Err((err, _)) = authorize(&rest.verifier, &rest.policy, GET_USER_PATH, &headers, None) {
        let code = match err {
            crate::Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        return (code, err.to_string()).into_response();
    }
    match rest
        .users
        .get_user(tonic::Request::new(GetUserRequest { user_id: id }))
        .await
    {
        Ok(user) => Json(user.into_inner()).into_response(),
        Err(status) => {
            let code = match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(serde_json::json!({"error": status.message()}))).into_response()
        }
    }
}

/// `GET /v1/users/{id}` over HTTPS with client certificates (HTTP/1.1, keep-alive).
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
