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
use http_body::{Body, Frame};
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

/// The trailers of a call that panicked: INTERNAL with the usual `ErrorInfo`.
fn internal_trailers() -> http::HeaderMap {
    let mut trailers = tonic::Status::from(crate::Error::Internal("handler panicked".into()))
        .into_http::<()>()
        .into_parts()
        .0
        .headers;
    trailers.remove(http::header::CONTENT_TYPE);
    trailers
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CatchPanic<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body + Default,
{
    type Response = Response<CaughtBody<ResBody>>;
    type Error = S::Error;
    type Future = Caught<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => Caught::Running {
                inner: AssertUnwindSafe(Box::pin(future)).catch_unwind(),
            },
            // Before the handler's future existed: the same answer as a panic inside it.
            Err(panic) => Caught::Early {
                response: Some(internal(&*panic)),
            },
        }
    }
}

/// The call's future. The handler's (tonic's routes: 320 bytes) is boxed once here, the
/// innermost layer, so every layer outside holds a pointer instead of it: the futures built
/// layer by layer for each call, then moved into hyper's and into the call's task, are
/// ~300 bytes smaller (the whole stack's 744 → 440), one allocation for fewer copies
/// (BENCHMARKS.md, session 17).
pub enum Caught<F, B> {
    Running {
        inner: futures::future::CatchUnwind<AssertUnwindSafe<Pin<Box<F>>>>,
    },
    /// The answer to a panic before the handler's future existed (taken when polled).
    Early { response: Option<Response<B>> },
}

impl<F, B> std::fmt::Debug for Caught<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Caught::Running { .. } => "Caught::Running",
            Caught::Early { .. } => "Caught::Early",
        })
    }
}

// Nothing in it is pinned: the handler's future is behind its box.
impl<F, B> Unpin for Caught<F, B> {}

impl<F, B, E> Future for Caught<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body + Default,
{
    type Output = Result<Response<CaughtBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.get_mut() {
            Caught::Early { response } => Ok(response
                .take()
                .unwrap_or_else(|| internal(&"the call's future was polled after it completed"))),
            Caught::Running { inner } => match ready!(inner.poll_unpin(cx)) {
                Ok(result) => result,
                Err(panic) => Ok(internal(&*panic)),
            },
        };
        Poll::Ready(response.map(|r| {
            r.map(|body| CaughtBody {
                inner: body,
                panicked: false,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body (a stream's messages are produced while it is polled): a panic
    /// there ends the stream with INTERNAL trailers, like a panic in the handler.
    pub struct CaughtBody<B> {
        #[pin]
        inner: B,
        panicked: bool,
    }
}

impl<B: Default> Default for CaughtBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            panicked: false,
        }
    }
}

impl<B: Body> Body for CaughtBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.panicked {
            return Poll::Ready(None);
        }
        let inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                *this.panicked = true;
                tracing::error!(
                    panic = describe(&*panic),
                    "response stream panicked; ended with INTERNAL"
                );
                Poll::Ready(Some(Ok(Frame::trailers(internal_trailers()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.panicked || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.panicked {
            return http_body::SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt as _;
    use tonic_types::StatusExt as _;
    use tower::ServiceExt as _;

    use super::*;

    fn assert_internal(headers: &http::HeaderMap) {
        let status = tonic::Status::from_header_map(headers).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error", "no details leak");
        let details = status.get_error_details();
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("INTERNAL")
        );
    }

    #[tokio::test]
    async fn a_panic_before_the_handler_future_exists_is_internal_with_error_info() {
        let service = tower::service_fn(
            |_req: Request<()>| -> futures::future::Ready<Result<Response<String>, Infallible>> {
                panic!("bug while building the call")
            },
        );
        let response = CatchPanicLayer
            .layer(service)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_internal(response.headers());
    }

    /// A stream that panics on its second message.
    #[derive(Default)]
    struct PanickyBody {
        polled: u8,
    }

    impl Body for PanickyBody {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            self.polled += 1;
            if self.polled > 1 {
                panic!("bug while streaming");
            }
            Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::from_static(b"first")))))
        }
    }

    #[tokio::test]
    async fn a_panic_in_a_response_stream_ends_it_with_internal_trailers() {
        let service = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(PanickyBody::default()))
        });
        let response = CatchPanicLayer
            .layer(service)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(collected.to_bytes(), "first");
        assert_internal(&trailers);
    }
}
