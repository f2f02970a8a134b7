//! Per-caller rate limiting: a token bucket per (certificate identity, token subject), so
//! one noisy caller cannot take the server from the others. Past the rate a call gets
//! RESOURCE_EXHAUSTED (reason `RATE_LIMITED`) with `grpc-retry-pushback-ms` saying when a
//! token is back. Runs after auth (it needs the subject); unauthenticated and public calls
//! are keyed by the certificate identity alone. Off when the rate is 0.
use std::{
    hash::{Hash, Hasher},
    num::NonZeroU32,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{Either, Ready, ready};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use http::{Request, Response};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::{error::Error, security::jwt::Principal, telemetry::metrics::Metrics, transport::Peer};

type Limiter = DefaultKeyedRateLimiter<u64>;

#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
    per_second: u32,
    metrics: Metrics,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("per_second", &self.per_second)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// `per_second` calls per caller, bursts up to `burst`; 0 turns limiting off.
    pub fn new(per_second: u32, burst: u32, metrics: Metrics) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self {
            limiter,
            per_second,
            metrics,
        }
    }

    /// Forgets callers that have been quiet long enough to have a full bucket again.
    pub fn spawn_upkeep(&self) -> Option<tokio::task::JoinHandle<()>> {
        let limiter = self.limiter.clone()?;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }))
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The caller's key: identity and subject, hashed (no allocation per call).
fn caller_key<B>(req: &Request<B>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.extensions()
        .get::<Arc<Peer>>()
        .map(|p| p.identity.as_str())
        .hash(&mut h);
    req.extensions()
        .get::<Arc<Principal>>()
        .map(|p| &*p.subject)
        .hash(&mut h);
    h.finish()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(limiter) = &self.layer.limiter else {
            return Either::Left(self.inner.call(req));
        };
        match limiter.check_key(&caller_key(&req)) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let wait_ms = wait.as_millis().max(1);
                self.layer
                    .metrics
                    .counter("jisu_rate_limited_total", &[])
                    .increment(1);
                let mut status: tonic::Status = Error::refused(
                    Code::ResourceExhausted,
                    "RATE_LIMITED",
                    format!(
                        "too many calls from this caller (at most {} per second); retry in {wait_ms} ms",
                        self.layer.per_second
                    ),
                )
                .into();
                if let Ok(v) = wait_ms.to_string().parse() {
                    status
                        .metadata_mut()
                        .insert(crate::api::RETRY_PUSHBACK_MS, v);
                }
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}
