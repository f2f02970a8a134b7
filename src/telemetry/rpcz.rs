//! Per-method call statistics over the last minute, for `/debug/rpcz`: calls, errors by
//! code, latency percentiles. Prometheus has the long history; this answers "what is
//! this server doing right now" without one.
//!
//! Each method keeps six 10-second slots (calls by code and an HDR latency histogram,
//! created on first use); a slot older than the window is cleared when reused, and a
//! snapshot merges the slots still inside the last minute.
use std::{
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::api;

const SLOT: Duration = Duration::from_secs(10);
const SLOTS: usize = 6;
/// The window a snapshot covers.
pub const WINDOW: Duration = Duration::from_secs(60);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn slot_of(now: Instant) -> u64 {
    (now.saturating_duration_since(*EPOCH).as_secs()) / SLOT.as_secs()
}

#[derive(Debug, Default)]
struct Slot {
    index: u64,
    codes: [u64; 17],
    /// Microseconds, 1 µs to 10 min, two significant digits.
    latency: Option<Histogram<u64>>,
}

impl Slot {
    fn clear(&mut self, index: u64) {
        self.index = index;
        self.codes = [0; 17];
        if let Some(h) = &mut self.latency {
            h.reset();
        }
    }
}

/// One method's slots.
#[derive(Debug)]
pub struct MethodWindow {
    service: &'static str,
    name: &'static str,
    slots: Mutex<[Slot; SLOTS]>,
}

impl MethodWindow {
    fn new(service: &'static str, name: &'static str) -> Self {
        Self {
            service,
            name,
            slots: Mutex::new(Default::default()),
        }
    }

    /// Counts a call that ended at `ended` with `code` after `took` (the caller's clock
    /// reading: no second one).
    pub fn record(&self, code: Code, ended: Instant, took: Duration) {
        let index = slot_of(ended);
        let mut slots = self.slots.lock();
        let slot = &mut slots[(index % SLOTS as u64) as usize];
        if slot.index != index {
            slot.clear(index);
        }
        slot.codes[code as usize] += 1;
        let h = slot.latency.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds")
        });
        h.saturating_record((took.as_micros() as u64).max(1));
    }

    fn snapshot(&self, now: Instant) -> Option<MethodStats> {
        let current = slot_of(now);
        let oldest = current.saturating_sub(SLOTS as u64 - 1);
        let slots = self.slots.lock();
        let mut codes = [0u64; 17];
        let mut merged: Option<Histogram<u64>> = None;
        for slot in slots
            .iter()
            .filter(|s| (oldest..=current).contains(&s.index))
        {
            for (total, n) in codes.iter_mut().zip(slot.codes) {
                *total += n;
            }
            if let Some(h) = &slot.latency {
                match &mut merged {
                    Some(m) => {
                        let _ = m.add(h);
                    }
                    None => merged = Some(h.clone()),
                }
            }
        }
        let calls: u64 = codes.iter().sum();
        if calls == 0 {
            return None;
        }
        let h = merged?;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Some(MethodStats {
            service: self.service.into(),
            method: self.name.into(),
            calls,
            errors: api::CODES
                .iter()
                .filter(|(code, _)| *code != Code::Ok && codes[*code as usize] > 0)
                .map(|(code, label)| ((*label).to_owned(), codes[*code as usize]))
                .collect(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1000.0,
        })
    }
}

/// What `/debug/api/rpcz` answers for one method.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodStats {
    pub service: String,
    pub method: String,
    pub calls: u64,
    /// Calls by failing code label (`PermissionDenied`: 3).
    pub errors: Vec<(String, u64)>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Every served method's window, in [`api::all_methods`] order (indexed by
/// [`api::served_index`], like the metrics table); paths nothing serves share `unknown`.
#[derive(Debug)]
pub struct Rpcz(api::PerMethod<Arc<MethodWindow>>);

impl Default for Rpcz {
    fn default() -> Self {
        Self(api::PerMethod::new(|m| {
            let (service, name) = m.map_or((api::UNKNOWN, api::UNKNOWN), |m| (m.service, m.name));
            Arc::new(MethodWindow::new(service, name))
        }))
    }
}

impl Rpcz {
    /// The window of the method at `index` ([`api::served_index`]; `None`: unknown).
    pub fn at(&self, index: Option<usize>) -> &Arc<MethodWindow> {
        self.0.at(index)
    }

    /// The methods called in the last minute, busiest first.
    pub fn snapshot(&self) -> Vec<MethodStats> {
        let now = Instant::now();
        let mut stats: Vec<MethodStats> = self.0.iter().filter_map(|m| m.snapshot(now)).collect();
        stats.sort_by(|a, b| {
            b.calls
                .cmp(&a.calls)
                .then_with(|| (&a.service, &a.method).cmp(&(&b.service, &b.method)))
        });
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_codes_and_percentiles_per_method() {
        let rpcz = Rpcz::default();
        let get = rpcz.at(api::served_index("/jisucloud.v1.UserService/GetUser"));
        for ms in 1..=100 {
            get.record(Code::Ok, Instant::now(), Duration::from_millis(ms));
        }
        get.record(
            Code::PermissionDenied,
            Instant::now(),
            Duration::from_millis(1),
        );
        get.record(
            Code::PermissionDenied,
            Instant::now(),
            Duration::from_millis(1),
        );
        rpcz.at(api::served_index("/nope/Nope")).record(
            Code::Unimplemented,
            Instant::now(),
            Duration::from_micros(3),
        );
        let stats = rpcz.snapshot();
        assert_eq!(stats.len(), 2, "{stats:?}");
        let s = &stats[0];
        assert_eq!((s.method.as_str(), s.calls), ("GetUser", 102));
        assert_eq!(s.errors, [("PermissionDenied".to_owned(), 2)]);
        assert!((49.0..=51.0).contains(&s.p50_ms), "{s:?}");
        assert!((98.0..=101.0).contains(&s.p99_ms), "{s:?}");
        assert_eq!(stats[1].service, "unknown");
    }

    #[test]
    fn a_slot_from_an_earlier_minute_is_not_counted() {
        let w = MethodWindow::new("s", "m");
        w.record(Code::Ok, Instant::now(), Duration::from_millis(1));
        // The same slot position, one whole window later.
        let later = Instant::now() + WINDOW;
        assert!(w.snapshot(later).is_none());
        assert!(w.snapshot(Instant::now()).is_some());
    }
}
