//! The debug pages, on their own plain-HTTP listener (loopback only unless
//! `debug.allow_remote`): `/debug/traces` (recent failed and slow calls and a sample of
//! the rest; `?trace=ID` shows one trace's span tree as a timeline) and `/debug/rpcz`
//! (per method over the last minute: calls, errors by code, latency percentiles), with
//! their JSON under `/debug/api/` (what `jisu trace` reads).
//!
//! They show user ids, client identities, error messages and traffic, so they are never
//! on the metrics port. A page served on loopback can still be reached by a browser on
//! the same machine through a rebound DNS name; requests whose `Host` is not an IP
//! address or `localhost` are refused (421) unless remote access was allowed.
use std::{future::Future, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub mod render;

use super::{
    recent::{RecentTraces, TraceRecord},
    rpcz::{self, MethodStats, Rpcz},
};

/// What the pages show, shared with the layer that records it.
#[derive(Debug, Clone)]
pub struct DebugState {
    pub recent: Arc<RecentTraces>,
    pub rpcz: Arc<Rpcz>,
}

impl DebugState {
    pub fn new(settings: &crate::config::DebugSettings, metrics: &super::metrics::Metrics) -> Self {
        Self {
            recent: Arc::new(RecentTraces::new(
                settings.kept_traces,
                settings.sampled_traces,
                metrics.gauge("jisu_debug_traces_bytes", &[]),
            )),
            rpcz: Arc::new(Rpcz::default()),
        }
    }
}

/// `GET /debug/api/traces`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TraceList {
    pub traces: Vec<TraceRecord>,
}

/// `GET /debug/api/traces/{id}`: this process's calls in that trace.
#[derive(Debug, Serialize, Deserialize)]
pub struct TraceCalls {
    pub trace_id: String,
    pub calls: Vec<TraceRecord>,
}

/// `GET /debug/api/rpcz`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RpczReport {
    pub window_secs: u64,
    pub methods: Vec<MethodStats>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    failures: bool,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct ApiError {
    error: String,
}

async fn list(State(state): State<DebugState>, Query(q): Query<ListQuery>) -> Json<TraceList> {
    let limit = q.limit.unwrap_or(100).min(1000);
    Json(TraceList {
        traces: state
            .recent
            .recent(q.failures, limit)
            .iter()
            .map(|r| TraceRecord::clone(r))
            .collect(),
    })
}

async fn trace(State(state): State<DebugState>, Path(id): Path<String>) -> Response {
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        let error = format!("{id:.64} is not a trace id (32 hexadecimal digits)");
        return (StatusCode::BAD_REQUEST, Json(ApiError { error })).into_response();
    }
    let calls: Vec<TraceRecord> = state
        .recent
        .trace(&id)
        .iter()
        .map(|r| TraceRecord::clone(r))
        .collect();
    if calls.is_empty() {
        let error = format!(
            "no call of trace {id} is kept here: only failed and slow calls and a sample of \
             the rest are, the newest first"
        );
        return (StatusCode::NOT_FOUND, Json(ApiError { error })).into_response();
    }
    Json(TraceCalls {
        trace_id: id.to_ascii_lowercase(),
        calls,
    })
    .into_response()
}

async fn rpcz_json(State(state): State<DebugState>) -> Json<RpczReport> {
    Json(RpczReport {
        window_secs: rpcz::WINDOW.as_secs(),
        methods: state.rpcz.snapshot(),
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

const HTML: &str = "text/html; charset=utf-8";

/// Headers every answer carries: nothing cached, nothing sniffed, no script but ours.
async fn harden(State(allow_remote): State<bool>, request: Request, next: Next) -> Response {
    if !allow_remote && !local_host(request.headers().get(header::HOST)) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "the debug pages answer only to an IP address or localhost\n",
        )
            .into_response();
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    response
}

/// `Host` is an IP address or `localhost` (with or without a port).
fn local_host(host: Option<&HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The pages' routes over `state`.
pub fn router(state: DebugState, allow_remote: bool) -> Router {
    Router::new()
        .route("/debug", get(|| async { Redirect::to("/debug/traces") }))
        .route(
            "/debug/traces",
            get(|| async { asset(HTML, include_str!("debug/traces.html")) }),
        )
        .route(
            "/debug/rpcz",
            get(|| async { asset(HTML, include_str!("debug/rpcz.html")) }),
        )
        .route(
            "/debug/static/debug.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("debug/debug.js"),
                )
            }),
        )
        .route(
            "/debug/static/debug.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("debug/debug.css")) }),
        )
        .route("/debug/api/traces", get(list))
        .route("/debug/api/traces/{id}", get(trace))
        .route("/debug/api/rpcz", get(rpcz_json))
        .with_state(state)
        .layer(middleware::from_fn_with_state(allow_remote, harden))
}

/// Serves the pages on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: DebugState,
    allow_remote: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, allow_remote))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_addresses_and_localhost_are_local_hosts() {
        let ok = |h: &str| local_host(Some(&HeaderValue::from_str(h).unwrap()));
        assert!(ok("127.0.0.1:9465"));
        assert!(ok("localhost:9465"));
        assert!(ok("LOCALHOST"));
        assert!(ok("[::1]:9465"));
        assert!(ok("10.1.2.3"));
        assert!(!ok("evil.example:9465"));
        assert!(!ok("127.0.0.1.nip.io"));
        assert!(!ok("[evil]:80"));
        assert!(!local_host(None));
    }
}
