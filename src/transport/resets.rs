//! How one connection's calls end, for the rapid-reset guard
//! ([`crate::middleware::reset_guard`] records; the connection closes itself when told).
use std::{
    collections::VecDeque,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll},
};

use futures::task::AtomicWaker;
use parking_lot::Mutex;

/// Calls remembered per connection.
pub const WINDOW: usize = 200;
/// Cancelled calls among the last [`WINDOW`] that close the connection.
pub const TRIP_CANCELLED: usize = 150;

/// How one connection's recent calls ended.
#[derive(Debug, Default)]
pub struct StreamResets {
    recent: Mutex<Recent>,
    /// Set when the connection must close. The connection's reads and writes check it
    /// (an atomic load and a waker registration: a `CancellationToken`'s future there cost
    /// ~870 instructions per call, a lock and a `Notified` poll on every read and write).
    tripped: AtomicBool,
    /// The connection's task, woken when it trips.
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct Recent {
    /// `true` for a cancelled call, newest last.
    outcomes: VecDeque<bool>,
    cancelled: usize,
}

impl StreamResets {
    /// Whether this connection has tripped (and must close).
    pub fn is_closed(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Ready once this connection has tripped; until then `cx`'s task is woken when it
    /// does.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closed() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Tripped between the load and the registration: its wake may have missed us.
        if self.is_closed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Records one call's end; true when this call tripped the connection.
    pub fn record(&self, cancelled: bool) -> bool {
        let mut recent = self.recent.lock();
        if recent.outcomes.len() == WINDOW && recent.outcomes.pop_front() == Some(true) {
            recent.cancelled -= 1;
        }
        recent.outcomes.push_back(cancelled);
        recent.cancelled += usize::from(cancelled);
        if recent.cancelled >= TRIP_CANCELLED && !self.tripped.swap(true, Ordering::AcqRel) {
            self.waker.wake();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_when_most_recent_calls_are_cancelled_and_only_then() {
        // A client that cancels one call in three never trips, however long it runs.
        let polite = StreamResets::default();
        for i in 0..10_000 {
            assert!(!polite.record(i % 3 == 0), "call {i}");
        }
        // An attacker trips at the TRIP_CANCELLED-th cancelled call, once.
        let attacker = StreamResets::default();
        let tripped: Vec<usize> = (1..=1000).filter(|_| attacker.record(true)).collect();
        assert_eq!(tripped, [TRIP_CANCELLED]);
        assert!(attacker.is_closed());
    }

    #[test]
    fn the_connection_waiting_on_it_is_woken_when_it_trips() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(this: &std::sync::Arc<Self>) {
                this.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = futures::task::waker(count.clone());
        let mut cx = Context::from_waker(&waker);
        let resets = StreamResets::default();
        assert!(resets.poll_closed(&mut cx).is_pending());
        for _ in 1..TRIP_CANCELLED {
            resets.record(true);
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "not tripped yet");
        assert!(resets.poll_closed(&mut cx).is_pending());
        assert!(resets.record(true));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "woken once, when it trips"
        );
        assert!(resets.poll_closed(&mut cx).is_ready());
    }
}
