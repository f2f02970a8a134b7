//! How one connection's calls end, for the rapid-reset guard
//! ([`crate::middleware::reset_guard`] records; the connection closes itself when told).
use std::collections::VecDeque;

use parking_lot::Mutex;

/// Calls remembered per connection.
pub const WINDOW: usize = 200;
/// Cancelled calls among the last [`WINDOW`] that close the connection.
pub const TRIP_CANCELLED: usize = 150;

/// How one connection's recent calls ended.
#[derive(Debug, Default)]
pub struct StreamResets {
    recent: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    /// `true` for a cancelled call, newest last.
    outcomes: VecDeque<bool>,
    cancelled: usize,
    /// It tripped once (the connection is told to close: [`super::phase`]).
    tripped: bool,
}

impl StreamResets {
    /// Whether this connection has tripped (and must close).
    pub fn is_closed(&self) -> bool {
        self.recent.lock().tripped
    }

    /// Records one call's end; true when this call tripped the connection.
    pub fn record(&self, cancelled: bool) -> bool {
        let mut recent = self.recent.lock();
        if recent.outcomes.len() == WINDOW && recent.outcomes.pop_front() == Some(true) {
            recent.cancelled -= 1;
        }
        recent.outcomes.push_back(cancelled);
        recent.cancelled += usize::from(cancelled);
        if recent.cancelled >= TRIP_CANCELLED && !recent.tripped {
            recent.tripped = true;
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
}
