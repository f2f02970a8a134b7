//! `GET /metrics` on its own plain-HTTP listener, never on the gRPC port; beside it
//! `GET /ready` (200 while the server is SERVING, 503 otherwise) for probes that cannot
//! speak gRPC over mutual TLS: Kubernetes readiness probes, L4 balancers' HTTP checks.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use super::metrics::Metrics;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}

async fn ready(State(serving): State<Arc<AtomicBool>>) -> impl IntoResponse {
    if serving.load(Ordering::Relaxed) {
        (StatusCode::OK, "SERVING\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
    }
}

/// Serves `/metrics` and `/ready` (what `serving` says) on `listener` until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    serving: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
        .merge(
            Router::new()
                .route("/ready", get(ready))
                .with_state(serving),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
