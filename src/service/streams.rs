//! Helpers shared by streaming handlers: the caller's deadline applied to a whole stream,
//! and the server's shutdown, which ends every open stream with UNAVAILABLE so clients
//! reconnect elsewhere instead of the server waiting out its grace period.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{FutureExt as _, Stream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Status, metadata::MetadataMap};

use crate::api;

/// Cancelled when the server starts shutting down. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends every stream guarded by this handle (and its clones).
    pub fn trigger(&self) {
        self.0.cancel();
    }

    fn wait(&self) -> Pin<Box<WaitForCancellationFutureOwned>> {
        Box::pin(self.0.clone().cancelled_owned())
    }
}

/// The deadline a caller set with `grpc-timeout` (e.g. `250m`, `10S`), if any.
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    Some(Instant::now() + api::grpc_timeout(metadata.as_ref())?)
}

pin_project_lite::pin_project! {
    /// Ends a response stream with DEADLINE_EXCEEDED once the caller's deadline passes
    /// (the server stops working for a caller that has given up), or with UNAVAILABLE when
    /// the server shuts down.
    pub struct Guarded<S> {
        #[pin]
        inner: S,
        sleep: Option<Pin<Box<Sleep>>>,
        shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
        expired: bool,
    }
}

/// Wraps `stream` with the deadline from `metadata` and the server's `shutdown`.
pub fn guard<S>(stream: S, metadata: &MetadataMap, shutdown: &Shutdown) -> Guarded<S> {
    Guarded {
        inner: stream,
        sleep: deadline(metadata).map(|at| Box::pin(tokio::time::sleep_until(at))),
        shutdown: shutdown.wait(),
        expired: false,
    }
}

impl<S, T> Stream for Guarded<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = this.inner.poll_next(cx) {
            return Poll::Ready(item);
        }
        if let Some(sleep) = this.sleep
            && sleep.as_mut().poll(cx).is_ready()
        {
            *this.expired = true;
            return Poll::Ready(Some(Err(Status::deadline_exceeded(
                "the call's deadline passed before the stream ended",
            ))));
        }
        if this.shutdown.poll_unpin(cx).is_ready() {
            *this.expired = true;
            return Poll::Ready(Some(Err(Status::unavailable(
                "the server is shutting down; reconnect (to another replica) and resume",
            ))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_comes_from_grpc_timeout() {
        let mut m = MetadataMap::new();
        assert!(deadline(&m).is_none());
        m.insert(api::GRPC_TIMEOUT, "10S".parse().unwrap());
        assert!(deadline(&m).is_some_and(|at| at > Instant::now()));
        m.insert(api::GRPC_TIMEOUT, "12x".parse().unwrap());
        assert!(deadline(&m).is_none());
    }
}
