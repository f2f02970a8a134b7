//! The HTTP/2 connection loop: each mutual-TLS connection is served by hyper with the
//! middleware stack; a connection is told to finish (GOAWAY) when it reaches its maximum
//! age, and closed when the grace period after that is over; on shutdown no connection is
//! accepted, every one is told to finish, and the loop returns when all have (dropping the
//! loop closes the rest).
//!
//! Ours rather than tonic's `Server`, for three reasons measured or seen failing: tonic
//! answers the caller's `grpc-timeout` itself, outside every layer (CANCELLED, uncounted,
//! no trace id), so the deadline layer had to answer a tick early; with a grace period set,
//! tonic's maximum connection age skipped the GOAWAY and closed the connection outright at
//! age + grace, cutting the calls in flight; and it polled both timers and the shutdown
//! signal at every wake of every connection (~700 instructions per call, one at a time).
//! Here a connection's timers live in their own small task and reach the connection as a
//! flag and a wake.
use std::{
    future::Future,
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::{Request, Response};
use hyper::{body::Incoming, server::conn::http2};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::{
    cork::{Corked, Turn},
    supervisor::AbortOnDrop,
};
use crate::transport::{MtlsStream, Peer, phase::Told};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection may live, and how long it has to finish after being told to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lifetime {
    pub max_age: Duration,
    pub grace: Duration,
}

/// Serves every connection of `incoming` with `service` until `signal`, then drains.
pub(super) async fn serve<S, B>(
    incoming: impl Stream<Item = io::Result<MtlsStream>>,
    service: S,
    http2: http2::Builder<TokioExecutor>,
    lifetime: Lifetime,
    signal: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let drain = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut signal = pin!(signal);
    {
        // Dropped (the listener with it) as soon as accepting stops.
        let mut incoming = pin!(incoming);
        loop {
            tokio::select! {
                () = &mut signal => break,
                next = incoming.next() => match next {
                    Some(Ok(io)) => {
                        connections.spawn(connection(io, service.clone(), http2.clone(), lifetime, drain.clone()));
                    }
                    Some(Err(error)) => tracing::debug!(%error, "connection not accepted"),
                    None => break,
                },
                // Reap connections that ended.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
    tracing::debug!(
        connections = connections.len(),
        "draining: every connection told to finish"
    );
    drain.cancel();
    while connections.join_next().await.is_some() {}
}

/// Serves one connection to its end; each request carries the connection's [`Peer`].
async fn connection<S, B>(
    io: MtlsStream,
    service: S,
    http2: http2::Builder<TokioExecutor>,
    lifetime: Lifetime,
    drain: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let peer = io.peer().clone();
    let remote_addr = peer.remote_addr;
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CountCalls {
        inner: TowerToHyperService::new(WithPeer {
            inner: service,
            peer: peer.clone(),
        }),
        calls: calls.clone(),
    };
    let turn = Arc::new(Turn::default());
    let conn = http2.serve_connection(TokioIo::new(Corked::new(io, calls, turn.clone())), service);
    // Ends with the connection, also when the connection's task is aborted.
    let _timers = AbortOnDrop(tokio::spawn(timers(peer.clone(), lifetime, drain)).abort_handle());
    let ended = Living {
        conn,
        peer,
        seen: Told::Open,
        turn,
    }
    .await;
    match ended {
        Ended::Closed(Ok(())) => {}
        Ended::Closed(Err(error)) => tracing::debug!(%remote_addr, %error, "connection ended"),
        Ended::Told(Told::RapidReset) => {
            tracing::debug!(%remote_addr, "connection closed: too many cancelled calls (rapid reset)");
        }
        Ended::Told(_) => {
            tracing::debug!(%remote_addr, "connection closed: the grace period after its maximum age is over");
        }
    }
}

/// Told to finish at its maximum age or when the server drains; closed when the grace
/// after its maximum age is over (a drain's grace is the server's: `Application` drops
/// the loop when it is over).
async fn timers(peer: Arc<Peer>, lifetime: Lifetime, drain: CancellationToken) {
    tokio::select! {
        () = drain.cancelled() => {
            peer.phase.tell(Told::Finish);
            return;
        }
        () = tokio::time::sleep(lifetime.max_age) => peer.phase.tell(Told::Finish),
    }
    tracing::debug!("connection reached its maximum age: told to finish");
    tokio::time::sleep(lifetime.grace).await;
    peer.phase.tell(Told::GraceOver);
}

enum Ended {
    Closed(Result<(), hyper::Error>),
    /// Told to close now ([`Told::GraceOver`] or [`Told::RapidReset`]).
    Told(Told),
}

pin_project_lite::pin_project! {
    /// A connection that checks what it has been told (one atomic load) whenever it is
    /// polled, each poll a new [`Turn`] of its reads.
    struct Living<C> {
        #[pin]
        conn: C,
        peer: Arc<Peer>,
        seen: Told,
        turn: Arc<Turn>,
    }
}

impl<I, S, B> Future for Living<http2::Connection<I, S, TokioExecutor>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let mut this = self.project();
        this.turn.begin();
        let told = this.peer.phase.observe(cx);
        if told != *this.seen {
            *this.seen = told;
            if told >= Told::GraceOver {
                return Poll::Ready(Ended::Told(told));
            }
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.poll(cx).map(Ended::Closed)
    }
}

/// Puts the connection's [`Peer`] in every request's extensions.
#[derive(Debug, Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Arc<Peer>,
}

impl<S> Service<Request<Incoming>> for WithPeer<S>
where
    S: Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}

/// Counts the connection's calls whose answer has not started (for [`Corked`]): from the
/// moment hyper accepts the call on the connection's task (the tower stack itself is
/// called only when the call's own task first runs).
#[derive(Debug, Clone)]
struct CountCalls<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
}

impl<S, R> hyper::service::Service<R> for CountCalls<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Counted {
            inner: self.inner.call(req),
            counted: Some(Uncount(self.calls.clone())),
        }
    }
}

/// Takes one call off the count when dropped.
struct Uncount(Arc<AtomicUsize>);

impl Drop for Uncount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A call counted until its answer (its head) is ready, or it is dropped.
    struct Counted<F> {
        #[pin]
        inner: F,
        counted: Option<Uncount>,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        this.counted.take();
        Poll::Ready(out)
    }
}
