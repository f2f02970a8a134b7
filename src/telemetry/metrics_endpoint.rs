//! `GET /metrics` on its own plain-HTTP listener, never on the gRPC port (the Prometheus
//! text format, or OpenMetrics with trace-id exemplars when asked for it); beside it
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
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use super::metrics::Metrics;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text format, or OpenMetrics (with exemplars) when the scraper accepts it, as
/// Prometheus does.
async fn scrape(State(metrics): State<Metrics>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            let mut parts = media.split(';').map(str::trim);
            parts.next() == Some("application/openmetrics-text")
                && !parts.any(|p| p.replace(' ', "") == "q=0")
        });
    if openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS)],
            metrics.render_openmetrics(),
        )
    } else {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
    }
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
