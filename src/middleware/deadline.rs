//! Every call is answered by its deadline: the caller's `grpc-timeout`, capped by the
//! server's maximum (`server.max_call_duration_ms`).
//! Past it the call ends with DEADLINE_EXCEEDED, reason `DEADLINE_PASSED` (the caller's deadline) or
//! `MAX_CALL_DURATION` (the server's cap), and the handler's future is dropped: the server
//! stops working for a caller that has given up. For a response stream the deadline
//! covers the handler up to its response; the stream itself is bounded in
//! `service::streams`. A call that streams its requests (an upload) is answered after its
//! last one, so only the caller's deadline bounds it (see [`streams_requests`]).
//!
//! Inside the metrics layer, so the answer is counted, traced and carries `x-trace-id`
//! like any other error. (tonic's `Server`, used before, enforced `grpc-timeout` itself,
//! outside every layer, and answered CANCELLED "Timeout expired": uncounted, without a
//! trace id, and a code that says the caller cancelled. The connections are now served by
//! `startup::serve`, where nothing else answers for this layer.)
//!
//! The timer is armed only when the call is still pending after its first poll: most
//! unary calls answer at once and never touch the runtime's timer wheel, and the future
//! each layer moves stays small (a deadline and a pointer, not a `Sleep`).
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::time::{Instant, Sleep};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use crate::{api, error::Error};

#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    max: Duration,
}

impl DeadlineLayer {
    /// Calls end at the caller's deadline, and at `max` whatever the caller asked.
    pub fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            max: self.max,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    max: Duration,
}

/// Whose limit ends the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Caller,
    Server,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Expiring<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let now = Instant::now();
        // An unreadable grpc-timeout is no deadline (as in gRPC's own servers); the
        // server's cap still holds. Whether the cap applies (a method-table lookup) only
        // matters when the caller's deadline does not come first.
        let asked = api::grpc_timeout(req.headers());
        let (after, limit) = match asked {
            Some(a) if a < self.max => (asked, Limit::Caller),
            _ if streams_requests(req.uri().path()) => (asked, Limit::Caller),
            _ => (Some(self.max), Limit::Server),
        };
        Expiring {
            inner: self.inner.call(req),
            at: after.map(|after| now + after),
            limit,
            max: self.max,
            sleep: None,
        }
    }
}

/// The server's cap bounds a call's work up to its answer. A call that streams its
/// requests (an upload) is answered only after the last one, however long the client
/// takes to send them (a large file over a slow link): only the caller's deadline bounds
/// it, and the file service's own limits (size, chunk) bound what it can cost.
fn streams_requests(path: &str) -> bool {
    api::served_method(path).is_some_and(|m| {
        matches!(
            m.call_type,
            api::CallType::ClientStream | api::CallType::BidiStream
        )
    })
}

pin_project_lite::pin_project! {
    pub struct Expiring<F> {
        #[pin]
        inner: F,
        // None: no deadline (a streamed request without the caller's).
        at: Option<Instant>,
        limit: Limit,
        max: Duration,
        // Armed at the first Pending.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

fn expired<B: Default>(limit: Limit, max: Duration) -> Response<B> {
    let (reason, message) = match limit {
        Limit::Caller => (
            "DEADLINE_PASSED",
            "the call's deadline (the caller's grpc-timeout) passed before the server answered"
                .to_owned(),
        ),
        Limit::Server => (
            "MAX_CALL_DURATION",
            format!(
                "the call ran past the server's limit of {} ms per call",
                max.as_millis()
            ),
        ),
    };
    tonic::Status::from(Error::refused(Code::DeadlineExceeded, reason, message)).into_http()
}

impl<F, B, E> Future for Expiring<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        let Some(at) = *this.at else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(expired(*this.limit, *this.max)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt as _;

    use super::*;

    /// Answers after `after`, or never.
    fn handler(
        after: Option<Duration>,
    ) -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<String>, Infallible>>,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| async move {
            match after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
            Ok::<_, Infallible>(Response::new("answered".to_owned()))
        })
    }

    fn request(timeout: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/jisucloud.v1.UserService/GetUser");
        if let Some(t) = timeout {
            b = b.header(api::GRPC_TIMEOUT, t);
        }
        b.body(()).unwrap()
    }

    fn status_of(response: &Response<String>) -> tonic::Status {
        tonic::Status::from_header_map(response.headers()).expect("a status")
    }

    fn reason(status: &tonic::Status) -> String {
        tonic_types::StatusExt::get_error_details(status)
            .error_info()
            .map(|i| i.reason.clone())
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_servers_limit_ends_with_max_call_duration() {
        let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(handler(None));
        let started = Instant::now();
        let response = svc.oneshot(request(None)).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        let status = status_of(&response);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(reason(&status), "MAX_CALL_DURATION");
        assert!(status.message().contains("30000 ms"), "{status:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_callers_timeout_ends_with_deadline_passed() {
        let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(handler(None));
        let started = Instant::now();
        let response = svc.oneshot(request(Some("250m"))).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        let status = status_of(&response);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(reason(&status), "DEADLINE_PASSED");
    }

    /// A caller asking for more than the server allows gets the server's limit; a
    /// grpc-timeout that cannot be read is no deadline at all.
    #[tokio::test(start_paused = true)]
    async fn the_servers_limit_caps_every_callers_timeout() {
        for asked in ["1H", "60S", "12x", ""] {
            let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(handler(None));
            let started = Instant::now();
            let response = svc.oneshot(request(Some(asked))).await.unwrap();
            assert_eq!(started.elapsed(), Duration::from_secs(30), "{asked:?}");
            assert_eq!(reason(&status_of(&response)), "MAX_CALL_DURATION");
        }
    }

    /// An upload is answered after its last chunk, however long that takes: the server's
    /// cap does not end it, the caller's deadline does.
    #[tokio::test(start_paused = true)]
    async fn a_call_streaming_its_requests_is_bounded_by_the_caller_alone() {
        let upload = |timeout: Option<&str>| {
            let mut r = request(timeout);
            *r.uri_mut() = "/jisucloud.v1.FileService/Upload".parse().unwrap();
            r
        };
        let svc = DeadlineLayer::new(Duration::from_secs(30))
            .layer(handler(Some(Duration::from_secs(3600))));
        let response = svc.oneshot(upload(None)).await.unwrap();
        assert_eq!(response.body(), "answered");
        let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(handler(None));
        let started = Instant::now();
        let response = svc.oneshot(upload(Some("60S"))).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(reason(&status_of(&response)), "DEADLINE_PASSED");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_time_passes_through_untouched() {
        for after in [Duration::ZERO, Duration::from_millis(248)] {
            let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(handler(Some(after)));
            let response = svc.oneshot(request(Some("250m"))).await.unwrap();
            assert_eq!(response.body(), "answered");
            assert!(tonic::Status::from_header_map(response.headers()).is_none());
        }
    }
}
