//! A panic in a handler becomes INTERNAL for that call, and only that call: the connection
//! and its other streams go on. The panic is logged (with its message) server-side; the
//! caller sees "internal error". Innermost, so metrics and the span record the INTERNAL.
use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures::FutureExt as _;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

fn describe(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Logged inside the call's span, so the line carries its trace id (and the span its method).
fn internal<B: Default>(panic: &(dyn Any + Send)) -> Response<B> {
    tracing::error!(
        panic = describe(panic),
        "handler panicked; answered INTERNAL"
    );
    tonic::Status::from(crate::Error::Internal("handler panicked".into())).into_http()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CatchPanic<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Caught<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => Caught {
                inner: Some(AssertUnwindSafe(future).catch_unwind()),
            },
            Err(panic) => {
                tracing::error!(panic = describe(&*panic), "handler panicked");
                Caught { inner: None }
            }
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Caught<F> {
        #[pin]
        inner: Option<futures::future::CatchUnwind<AssertUnwindSafe<F>>>,
    }
}

impl<F, B, E> Future for Caught<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Ok(tonic::Status::internal("internal error").into_http()));
        };
        Poll::Ready(match ready!(inner.poll(cx)) {
            Ok(result) => result,
            Err(panic) => Ok(internal(&*panic)),
        })
    }
}
