//! Load shedding: at most `limit` calls are handled at once; past that a call is refused
//! at once with RESOURCE_EXHAUSTED (reason `OVERLOADED`, `grpc-retry-pushback-ms` set) so
//! admitted calls keep their latency and clients back off or go elsewhere. Health checks
//! are never shed: a load balancer must still see the server. A call holds its slot until
//! its handler returns (for streams: until the stream is set up, not for its lifetime).
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;

/// Suggested wait before a retry of a shed call.
pub const PUSHBACK_MS: &str = "50";

#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl LoadShedLayer {
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            permits: self.permits.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    limit: usize,
}

pin_project_lite::pin_project! {
    /// The handler's future, holding its slot until it completes.
    pub struct Admitted<F> {
        #[pin]
        inner: F,
        _permit: OwnedSemaphorePermit,
    }
}

impl<F: Future> Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

/// `/grpc.health.v1.Health/<method>`: a prefix compare (every call passes here), the
/// method part checked only for health paths.
fn is_health_check(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(crate::api::HEALTH_SERVICE))
        .and_then(|p| p.strip_prefix('/'))
        .is_some_and(|method| !method.is_empty() && !method.contains('/'))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LoadShed<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future =
        Either<Either<Admitted<S::Future>, S::Future>, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if is_health_check(req.uri().path()) {
            return Either::Left(Either::Right(self.inner.call(req)));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Either::Left(Either::Left(Admitted {
                inner: self.inner.call(req),
                _permit: permit,
            })),
            Err(_) => {
                let mut status: tonic::Status = Error::refused(
                    Code::ResourceExhausted,
                    "OVERLOADED",
                    format!(
                        "the server is handling its limit of {} calls; retry with backoff",
                        self.limit
                    ),
                )
                .into();
                status.metadata_mut().insert(
                    crate::api::RETRY_PUSHBACK_MS,
                    PUSHBACK_MS.parse().expect("ascii"),
                );
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use super::*;

    fn request(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    /// A handler that never finishes: each admitted call holds its slot.
    fn stuck() -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<Response<String>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(|_req: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        })
    }

    #[test]
    fn only_health_methods_are_health_checks() {
        assert!(is_health_check("/grpc.health.v1.Health/Check"));
        assert!(is_health_check("/grpc.health.v1.Health/Watch"));
        for path in [
            "/jisucloud.v1.UserService/GetUser",
            "/grpc.health.v1.HealthX/Check",
            "/grpc.health.v1.Health/",
            "/grpc.health.v1.Health/Check/x",
            "grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health",
        ] {
            assert!(!is_health_check(path), "{path}");
        }
    }

    #[tokio::test]
    async fn past_the_limit_calls_are_refused_at_once_and_health_checks_pass() {
        let shed = LoadShedLayer::new(2);
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut call = Box::pin(
                shed.layer(stuck())
                    .oneshot(request("/jisucloud.v1.UserService/GetUser")),
            );
            assert!(futures::poll!(&mut call).is_pending(), "admitted, running");
            held.push(call);
        }
        let refused = shed
            .layer(stuck())
            .oneshot(request("/jisucloud.v1.UserService/GetUser"))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            refused.headers()[crate::api::RETRY_PUSHBACK_MS],
            PUSHBACK_MS
        );
        // Health checks are never shed (the handler runs: it is pending, not refused).
        let mut health = Box::pin(
            shed.layer(stuck())
                .oneshot(request("/grpc.health.v1.Health/Check")),
        );
        assert!(futures::poll!(&mut health).is_pending());
        // A finished (here: dropped) call frees its slot.
        held.pop();
        let mut next = Box::pin(
            shed.layer(stuck())
                .oneshot(request("/jisucloud.v1.UserService/GetUser")),
        );
        assert!(futures::poll!(&mut next).is_pending(), "admitted again");
    }
}
