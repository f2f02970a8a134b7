//! The retry budget (gRPC A6 token bucket): retries cannot multiply an outage.

/// The A6 retry throttle: retries stop while more than half the tokens are spent.
#[derive(Debug)]
pub(super) struct Budget {
    pub(super) tokens: f64,
    pub(super) max: f64,
    pub(super) ratio: f64,
}

impl Budget {
    pub(super) fn failure(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
    pub(super) fn success(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(self.max);
    }
    pub(super) fn allows_retry(&self) -> bool {
        self.tokens > self.max / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_retries_after_a_run_of_failures() {
        let mut b = Budget {
            tokens: 10.0,
            max: 10.0,
            ratio: 0.1,
        };
        assert!(b.allows_retry());
        for _ in 0..5 {
            b.failure();
        }
        assert!(!b.allows_retry(), "half spent: no more retries");
        for _ in 0..10 {
            b.success();
        }
        assert!(b.allows_retry(), "successes earn retries back");
    }
}
