//! THE one place the gRPC middleware stack is composed: HTTP/2 limits, then each layer,
//! outermost first, with why it sits where it sits. Pure: it builds the server future from
//! its parts; the connections it serves are its own tasks (background tasks belong to the
//! supervisor).
use std::{future::Future, time::Duration};

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tower::ServiceBuilder;

use super::serve::{Lifetime, serve};
use crate::{
    config::Settings,
    middleware::{
        AuthLayer, CatchPanicLayer, DeadlineLayer, LoadShedLayer, MetricsLayer, RateLimitLayer,
        ResetGuardLayer, metrics::KeepPolicy,
    },
    security::{authz::PolicyHandle, jwt::TokenVerifier},
    telemetry::{debug::DebugState, metrics::Metrics},
    transport::MtlsStream,
};

/// What the layers need.
#[derive(Debug)]
pub(super) struct Layers {
    pub metrics: Metrics,
    pub verifier: TokenVerifier,
    pub policy: PolicyHandle,
    pub rate_limit: RateLimitLayer,
    pub debug: DebugState,
}

/// Serves `routes` on the mTLS connections of `incoming` until `signal`, behind the stack.
pub(super) fn serve_grpc(
    settings: &Settings,
    layers: Layers,
    routes: Routes,
    incoming: ReceiverStream<std::io::Result<MtlsStream>>,
    signal: impl Future<Output = ()> + Send,
) -> impl Future<Output = ()> {
    let limits = &settings.server;
    let Layers {
        metrics,
        verifier,
        policy,
        rate_limit,
        debug,
    } = layers;
    // Limits first: work refused by h2 costs nothing downstream.
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_local_error_reset_streams(Some(1024))
        .max_pending_accept_reset_streams(Some(128))
        .max_header_list_size(16 * 1024);
    // No HTTP/2 keepalive PINGs: hyper checks their timer at every poll of a connection
    // (~1,500 instructions per call, one call at a time; BENCHMARKS.md, session 12). Dead
    // peers are found by TCP keepalive instead (`transport`), at no cost per call, and a
    // live but stuck one is bounded by the maximum connection age.
    let lifetime = Lifetime {
        max_age: Duration::from_secs(limits.max_connection_age_secs),
        grace: settings.shutdown_grace(),
    };
    let stack = ServiceBuilder::new()
        // Paced rapid reset: a connection whose calls are mostly cancelled by the client
        // is closed. Outermost, so it sees every call end, however early.
        .layer(ResetGuardLayer::new(metrics.clone()))
        // Observe everything, including calls auth refuses and calls shed.
        .layer(MetricsLayer::new(
            metrics.clone(),
            KeepPolicy::new(&settings.tracing, settings.debug.sample_ratio),
            debug,
        ))
        // Every call answered by the caller's grpc-timeout, capped by the server's maximum
        // (DEADLINE_EXCEEDED; streams past their start: service::streams). Inside metrics,
        // so the answer is counted and carries x-trace-id.
        .layer(DeadlineLayer::new(Duration::from_millis(
            limits.max_call_duration_ms,
        )))
        // Shed load before spending anything on a call (health checks pass).
        .layer(LoadShedLayer::new(limits.max_concurrent_calls))
        // Who is calling: the bearer token and the method's scope, before any handler;
        // a path outside the method table stops here.
        .layer(AuthLayer::new(verifier, policy, metrics))
        // One caller cannot take the server from the others (needs auth's subject).
        .layer(rate_limit)
        // A panic fails its own call with INTERNAL, nothing else.
        .layer(CatchPanicLayer)
        .service(routes);
    serve(incoming, stack, http2, lifetime, signal)
}
