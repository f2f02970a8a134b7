//! One server the client can send to: its channel, health, calls in flight and circuit
//! breaker, and the guard a call holds on it.
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use parking_lot::Mutex;
use tokio::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool },
}

/// One server the client can send to.
#[derive(Debug)]
pub struct Replica {
    pub endpoint: String,
    pub(super) channel: Channel,
    pub(super) in_flight: AtomicUsize,
    pub(super) healthy: AtomicBool,
    pub(super) circuit: Mutex<Circuit>,
    pub(super) served: AtomicUsize,
}

impl Replica {
    /// Calls answered by this replica (for tests and reports).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// What the last health check said (SERVING) or the transport let through.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_open(&self) -> bool {
        matches!(*self.circuit.lock(), Circuit::Open { .. })
    }

    pub(super) fn usable(&self, now: Instant) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        match *self.circuit.lock() {
            Circuit::Closed { .. } => true,
            Circuit::Open { until, .. } => now >= until,
            Circuit::HalfOpen { probing } => !probing,
        }
    }

    /// Takes the replica for one call: `None` if its circuit says no, `Some(true)` when
    /// this call is the half-open circuit's one probe.
    pub(super) fn admit(&self, now: Instant) -> Option<bool> {
        let mut c = self.circuit.lock();
        match *c {
            Circuit::Closed { .. } => Some(false),
            Circuit::Open { until, .. } if now >= until => {
                tracing::info!(endpoint = %self.endpoint, "circuit half-open: probing");
                *c = Circuit::HalfOpen { probing: true };
                Some(true)
            }
            Circuit::Open { .. } => None,
            Circuit::HalfOpen { probing: false } => {
                *c = Circuit::HalfOpen { probing: true };
                Some(true)
            }
            Circuit::HalfOpen { probing: true } => None,
        }
    }
}

/// One call's hold on a replica: counts it in flight and, for a half-open circuit's
/// probe, owns the probe. Dropped without an outcome (the caller gave up on the call),
/// it undoes both, so the balancer does not avoid the replica forever and the breaker
/// does not wait forever for a probe that will never report.
pub(super) struct Admission {
    pub(super) replica: Arc<Replica>,
    pub(super) probe: bool,
}

impl Admission {
    pub(super) fn new(replica: Arc<Replica>, probe: bool) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { replica, probe }
    }

    /// The outcome was recorded: the probe is settled.
    pub(super) fn settled(&mut self) {
        self.probe = false;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            let mut c = self.replica.circuit.lock();
            if *c == (Circuit::HalfOpen { probing: true }) {
                // Another call may probe.
                *c = Circuit::HalfOpen { probing: false };
            }
        }
    }
}
