//! Recent kept traces, in memory: every call that failed or was slow (whatever head
//! sampling decided and whether or not a collector is configured), and a small sample of
//! the rest, so the trace id an error carries can be looked up on the server itself
//! (`jisu trace ID`, `/debug/traces`).
//!
//! Two bounded rings, oldest dropped first: one for failed and slow calls, one for the
//! sample, so a busy server's successes never push its errors out. Each record is
//! bounded too (at most [`jisu_client::children::MAX_CHILDREN`] child spans, attribute
//! values cut at [`MAX_VALUE`] bytes, [`MAX_RECORD_BYTES`] in all), so the store's memory
//! has a ceiling, [`RecentTraces::ceiling_bytes`] (about 9.4 MiB at the default 1000 + 200
//! records); `jisu_debug_traces_bytes` shows what it holds.
use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Longest attribute value or status message kept, in bytes.
pub const MAX_VALUE: usize = 256;

/// Most bytes one record may hold ([`TraceRecord::bytes`]): past it, its last child spans
/// are left out (counted in `dropped_spans`). A failed CreateUser with its store span is
/// about 1.6 KiB.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;

/// One kept call: its SERVER span and the spans inside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceRecord {
    pub trace_id: String,
    /// Why it was kept: `error`, `slow` or `sample`.
    pub kept_by: String,
    /// `jisucloud.v1.UserService/GetUser`.
    pub method: String,
    /// The final gRPC code's label (`OK`, `PermissionDenied`, ...).
    pub code: String,
    /// The status message the caller got (errors only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Wall-clock start, Unix nanoseconds.
    pub start_unix_nanos: u64,
    pub duration_micros: u64,
    /// The SERVER span first, then its children in the order they started.
    pub spans: Vec<SpanRecord>,
    /// Children left out past the per-call bound.
    #[serde(default)]
    pub dropped_spans: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpanRecord {
    pub span_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `server`, `client` or `internal`.
    pub kind: String,
    /// From the start of the trace's SERVER span.
    pub offset_micros: u64,
    pub duration_micros: u64,
    /// `OK`, or the code label / `ERROR` of a failed span.
    pub status: String,
    pub attributes: Vec<(String, String)>,
}

impl TraceRecord {
    /// What this record holds on the heap and inline, roughly (strings' lengths, the
    /// vectors' elements).
    pub fn bytes(&self) -> usize {
        let strings = self.trace_id.len()
            + self.kept_by.len()
            + self.method.len()
            + self.code.len()
            + self.message.len();
        let spans: usize = self
            .spans
            .iter()
            .map(|s| {
                std::mem::size_of::<SpanRecord>()
                    + s.span_id.len()
                    + s.parent_span_id.as_ref().map_or(0, String::len)
                    + s.name.len()
                    + s.kind.len()
                    + s.status.len()
                    + s.attributes
                        .iter()
                        .map(|(k, v)| std::mem::size_of::<(String, String)>() + k.len() + v.len())
                        .sum::<usize>()
            })
            .sum();
        std::mem::size_of::<Self>() + strings + spans
    }

    /// Leaves out child spans, last first, until the record fits in `max` bytes.
    fn fit(&mut self, max: usize) {
        while self.spans.len() > 1 && self.bytes() > max {
            self.spans.pop();
            self.dropped_spans += 1;
        }
    }
}

/// Cuts `s` to at most [`MAX_VALUE`] bytes, on a character boundary.
pub fn bounded(mut s: String) -> String {
    if s.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The two rings.
#[derive(Debug)]
pub struct RecentTraces {
    kept: Mutex<Ring>,
    sampled: Mutex<Ring>,
    bytes: metrics::Gauge,
}

#[derive(Debug)]
struct Ring {
    records: VecDeque<Arc<TraceRecord>>,
    capacity: usize,
    bytes: usize,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            records: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            bytes: 0,
        }
    }

    /// Adds `record`; returns the change in bytes held.
    fn push(&mut self, record: Arc<TraceRecord>) -> isize {
        if self.capacity == 0 {
            return 0;
        }
        let mut change = record.bytes() as isize;
        while self.records.len() >= self.capacity {
            if let Some(old) = self.records.pop_front() {
                change -= old.bytes() as isize;
            }
        }
        self.records.push_back(record);
        self.bytes = (self.bytes as isize + change) as usize;
        change
    }
}

impl RecentTraces {
    /// `kept` failed or slow calls and `sampled` others at most; `bytes` is the gauge
    /// (`jisu_debug_traces_bytes`) that shows what is held.
    pub fn new(kept: usize, sampled: usize, bytes: metrics::Gauge) -> Self {
        Self {
            kept: Mutex::new(Ring::new(kept)),
            sampled: Mutex::new(Ring::new(sampled)),
            bytes,
        }
    }

    /// The most memory the records can hold, whatever calls arrive.
    pub fn ceiling_bytes(&self) -> usize {
        (self.kept.lock().capacity + self.sampled.lock().capacity) * MAX_RECORD_BYTES
    }

    /// What the records hold now.
    pub fn held_bytes(&self) -> usize {
        self.kept.lock().bytes + self.sampled.lock().bytes
    }

    pub fn insert(&self, mut record: TraceRecord) {
        record.fit(MAX_RECORD_BYTES);
        let ring = if record.kept_by == "sample" {
            &self.sampled
        } else {
            &self.kept
        };
        let change = ring.lock().push(Arc::new(record));
        if change >= 0 {
            self.bytes.increment(change as f64);
        } else {
            self.bytes.decrement(-change as f64);
        }
    }

    /// The records of `trace_id` (one per call of this process in that trace: a call
    /// chain can pass through a process more than once).
    pub fn trace(&self, trace_id: &str) -> Vec<Arc<TraceRecord>> {
        let mut found: Vec<Arc<TraceRecord>> = [&self.kept, &self.sampled]
            .iter()
            .flat_map(|ring| {
                ring.lock()
                    .records
                    .iter()
                    .filter(|r| r.trace_id.eq_ignore_ascii_case(trace_id))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        found.sort_by_key(|r| r.start_unix_nanos);
        found
    }

    /// The newest records first: failed and slow calls only (`failures`), or every
    /// kept one; at most `limit`.
    pub fn recent(&self, failures: bool, limit: usize) -> Vec<Arc<TraceRecord>> {
        let mut all: Vec<Arc<TraceRecord>> = self.kept.lock().records.iter().cloned().collect();
        if !failures {
            all.extend(self.sampled.lock().records.iter().cloned());
        }
        all.sort_by_key(|r| std::cmp::Reverse(r.start_unix_nanos));
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize, kept_by: &str, children: usize, value: usize) -> TraceRecord {
        let span = |n: usize| SpanRecord {
            span_id: format!("{n:016x}"),
            parent_span_id: (n > 0).then(|| format!("{:016x}", 0)),
            name: "jisucloud.v1.OrderService/CreateOrder".into(),
            kind: "internal".into(),
            offset_micros: 0,
            duration_micros: 1,
            status: "OK".into(),
            attributes: (0..4)
                .map(|k| (format!("attribute.{k}"), bounded("x".repeat(value))))
                .collect(),
        };
        TraceRecord {
            trace_id: format!("{i:032x}"),
            kept_by: kept_by.into(),
            method: "jisucloud.v1.OrderService/CreateOrder".into(),
            code: "Internal".into(),
            message: bounded("m".repeat(value)),
            start_unix_nanos: i as u64,
            duration_micros: 1,
            spans: (0..=children).map(span).collect(),
            dropped_spans: 0,
        }
    }

    #[test]
    fn oldest_go_first_and_samples_never_push_out_failures() {
        let store = RecentTraces::new(3, 2, metrics::Gauge::noop());
        for i in 0..5 {
            store.insert(record(i, "error", 1, 10));
        }
        for i in 5..50 {
            store.insert(record(i, "sample", 1, 10));
        }
        let failures: Vec<u64> = store
            .recent(true, 10)
            .iter()
            .map(|r| r.start_unix_nanos)
            .collect();
        assert_eq!(failures, [4, 3, 2]);
        let all: Vec<u64> = store
            .recent(false, 10)
            .iter()
            .map(|r| r.start_unix_nanos)
            .collect();
        assert_eq!(all, [49, 48, 4, 3, 2]);
        assert!(store.trace(&format!("{:032x}", 0)).is_empty());
        assert_eq!(store.trace(&format!("{:032X}", 4)).len(), 1);
    }

    #[test]
    fn memory_stays_under_the_ceiling_with_the_largest_records() {
        let store = RecentTraces::new(20, 5, metrics::Gauge::noop());
        for i in 0..100 {
            store.insert(record(
                i,
                if i % 2 == 0 { "error" } else { "sample" },
                jisu_client::children::MAX_CHILDREN,
                10 * MAX_VALUE,
            ));
        }
        let held = store.held_bytes();
        let expected: usize = store.recent(false, 100).iter().map(|r| r.bytes()).sum();
        assert_eq!(held, expected);
        assert!(
            held > 0 && held <= store.ceiling_bytes(),
            "{held} > {}",
            store.ceiling_bytes()
        );
        // Values were cut (no attribute longer than the bound, plus the ellipsis), and
        // the spans that did not fit were counted.
        let newest = &store.recent(false, 1)[0];
        let longest = newest.spans[1].attributes[0].1.len();
        assert!(longest <= MAX_VALUE + '…'.len_utf8(), "{longest}");
        assert!(newest.bytes() <= MAX_RECORD_BYTES);
        assert_eq!(
            newest.spans.len() - 1 + newest.dropped_spans as usize,
            jisu_client::children::MAX_CHILDREN
        );
        assert!(newest.dropped_spans > 0);
    }
}
