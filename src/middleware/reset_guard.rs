//! Paced Rapid Reset (CVE-2023-44487 at a rate the server keeps up with): a client that
//! opens streams and cancels them at once, steadily, is never caught by the HTTP/2
//! library's pending-accept limit, yet each stream costs the server a call's setup. This
//! layer watches how each connection's calls end and closes a connection whose recent
//! calls are mostly cancelled by the client.
//!
//! A call counts as cancelled when the client reset its stream (its request body ends in
//! a RST_STREAM from the client: the handler then fails, or hyper drops the call's future
//! or response body before the end), completed otherwise. A connection trips when at
//! least [`TRIP_CANCELLED`](crate::transport::resets::TRIP_CANCELLED) of its last
//! [`WINDOW`](crate::transport::resets::WINDOW) calls were cancelled: a legitimate
//! client cancels a call now and then, never three in four. Tripping tells the connection
//! to close ([`crate::transport::phase`]); its task then drops it at its next poll (closed
//! rather than sent a GOAWAY ENHANCE_YOUR_CALM, which hyper does not expose), counted in
//! `jisu_connections_closed_total{reason="rapid_reset"}`.
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    telemetry::metrics::Metrics,
    transport::{Peer, phase::Told},
};

/// Adds [`ResetGuard`] to a service.
#[derive(Debug, Clone)]
pub struct ResetGuardLayer {
    metrics: Metrics,
}

impl ResetGuardLayer {
    pub fn new(metrics: Metrics) -> Self {
        metrics
            .counter(
                "jisu_connections_closed_total",
                &[("reason", "rapid_reset")],
            )
            .increment(0);
        Self { metrics }
    }
}

impl<S> Layer<S> for ResetGuardLayer {
    type Service = ResetGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResetGuard {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Records how each call of a connection ends (see the module docs).
#[derive(Debug, Clone)]
pub struct ResetGuard<S> {
    inner: S,
    metrics: Metrics,
}

/// One call's pending outcome: cancelled unless settled otherwise before it is dropped.
#[derive(Debug)]
struct Outcome {
    peer: Arc<Peer>,
    metrics: Metrics,
    /// Set by the request body when the client reset the stream.
    client_reset: Arc<AtomicBool>,
}

impl Outcome {
    fn settle(self, dropped: bool) {
        let cancelled = dropped || self.client_reset.load(Ordering::Relaxed);
        if self.peer.resets.record(cancelled) {
            // The connection's own task closes it at its next poll (`startup::serve`).
            self.peer.phase.tell(Told::RapidReset);
            tracing::warn!(
                remote_addr = %self.peer.remote_addr,
                identity = %self.peer.identity,
                "closing a connection whose calls are mostly cancelled (rapid reset)"
            );
            self.metrics
                .counter(
                    "jisu_connections_closed_total",
                    &[("reason", "rapid_reset")],
                )
                .increment(1);
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResetGuard<S>
where
    S: Service<Request<GuardedRequest<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ReqBody::Error: std::error::Error + 'static,
    ResBody: Body,
{
    type Response = Response<GuardedBody<ResBody>>;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let client_reset = Arc::new(AtomicBool::new(false));
        let outcome = req.extensions().get::<Arc<Peer>>().map(|peer| Outcome {
            peer: peer.clone(),
            metrics: self.metrics.clone(),
            client_reset: client_reset.clone(),
        });
        let req = req.map(|inner| GuardedRequest {
            inner,
            client_reset,
            ended: false,
        });
        GuardedFuture {
            inner: self.inner.call(req),
            outcome: Pending(outcome),
        }
    }
}

/// Settles as cancelled when dropped unsettled.
#[derive(Debug)]
struct Pending(Option<Outcome>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(outcome) = self.0.take() {
            outcome.settle(true);
        }
    }
}

pin_project! {
    /// The call's future: dropped before it resolves, the call was cancelled.
    pub struct GuardedFuture<F> {
        #[pin]
        inner: F,
        outcome: Pending,
    }
}

impl<F, B, E> Future for GuardedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<GuardedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let outcome = this.outcome.0.take();
        Poll::Ready(match result {
            Ok(response) => Ok(response.map(|body| {
                // A trailers-only answer (an error) is complete before it is polled.
                let outcome = match outcome {
                    Some(outcome) if body.is_end_stream() => {
                        outcome.settle(false);
                        None
                    }
                    outcome => outcome,
                };
                GuardedBody {
                    inner: body,
                    outcome: Pending(outcome),
                }
            })),
            Err(e) => {
                if let Some(outcome) = outcome {
                    outcome.settle(false);
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// The response body: dropped before its end, the call was cancelled.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        outcome: Pending,
    }
}

impl<B: Body> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        // The end: no more frames, the trailers (hyper stops polling after them), or a
        // body that says so.
        let ended = match &frame {
            None => true,
            Some(Ok(f)) => f.is_trailers() || this.inner.is_end_stream(),
            Some(Err(_)) => false,
        };
        if ended && let Some(outcome) = this.outcome.0.take() {
            outcome.settle(false);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The request body: notes a RST_STREAM from the client, also one that came before the
    /// body was read (a call answered without reading its request, e.g. refused by auth:
    /// looked at once, without waiting, when the body is dropped). Without that a flood of
    /// HEADERS + RST_STREAM without a token counted as calls answered, never cancelled, and
    /// only HTTP/2's own pending-accept limit could stop it, when enough of the flood was
    /// read in one turn.
    pub struct GuardedRequest<B>
    where
        B: Body,
        // One bound per line: `pin_project_lite` takes no `+` in a where clause.
        B::Error: std::error::Error,
        B::Error: 'static,
    {
        #[pin]
        inner: B,
        client_reset: Arc<AtomicBool>,
        // Read to its end (or to an error): nothing left to look at.
        ended: bool,
    }

    impl<B> PinnedDrop for GuardedRequest<B>
    where
        B: Body,
        B::Error: std::error::Error,
        B::Error: 'static,
    {
        fn drop(this: Pin<&mut Self>) {
            if this.ended || this.client_reset.load(Ordering::Relaxed) {
                return;
            }
            let this = this.project();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(Some(Err(e))) = this.inner.poll_frame(&mut cx)
                && is_client_reset(&e)
            {
                this.client_reset.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// A stream reset by the client, found in an error's source chain.
fn is_client_reset(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_reset() && h2.is_remote();
        }
        cause = e.source();
    }
    false
}

impl<B> Body for GuardedRequest<B>
where
    B: Body,
    B::Error: std::error::Error + 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Err(e)) => {
                *this.ended = true;
                if is_client_reset(e) {
                    this.client_reset.store(true, Ordering::Relaxed);
                }
            }
            None => *this.ended = true,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use tower::ServiceExt as _;

    use super::*;
    use crate::transport::resets::TRIP_CANCELLED;

    fn peer() -> Arc<Peer> {
        Arc::new(Peer {
            remote_addr: "127.0.0.1:50000".parse().unwrap(),
            local_addr: "127.0.0.1:50051".parse().unwrap(),
            identity: "client".into(),
            cert_sha256: [0; 32],
            resets: Arc::default(),
            phase: Arc::default(),
            token: Arc::default(),
            attributes: Default::default(),
        })
    }

    fn request(peer: &Arc<Peer>) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::new()));
        req.extensions_mut().insert(peer.clone());
        req
    }

    #[tokio::test]
    async fn a_connection_whose_calls_are_cancelled_is_closed_and_one_that_completes_is_not() {
        let metrics = Metrics::new();
        let layer = ResetGuardLayer::new(metrics.clone());
        let patient = peer();
        // Calls that complete (their body read to the end) never trip, however many.
        let done = tower::service_fn(|_req: Request<GuardedRequest<Full<Bytes>>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        for _ in 0..1000 {
            let response = layer.layer(done).oneshot(request(&patient)).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        assert!(!patient.resets.is_closed());
        assert_eq!(patient.phase.told(), Told::Open);

        // Calls whose future the client cancels (hyper drops it on RST_STREAM) trip it.
        let rude = peer();
        let never = tower::service_fn(|_req: Request<GuardedRequest<Full<Bytes>>>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        });
        for i in 1..=TRIP_CANCELLED {
            assert!(!rude.resets.is_closed(), "call {i}");
            assert_eq!(rude.phase.told(), Told::Open, "call {i}");
            let mut call = Box::pin(layer.layer(never).oneshot(request(&rude)));
            assert!(futures::poll!(&mut call).is_pending());
            drop(call);
        }
        assert!(rude.resets.is_closed());
        assert_eq!(rude.phase.told(), Told::RapidReset, "told to close");
        assert!(
            metrics
                .render()
                .contains("jisu_connections_closed_total{reason=\"rapid_reset\"} 1"),
            "counted once"
        );
    }
}
