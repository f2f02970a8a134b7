//! Prometheus metrics: a recorder owned by each `Application` (not the global one, so two
//! servers in one process keep their own counts), handles built once per method, and the
//! text exposition for `/metrics`.
//!
//! Names and labels follow go-grpc-prometheus, so existing dashboards work.
use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram, Key, Label, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use parking_lot::Mutex;

use super::otel;

/// Latency buckets in seconds: 100 µs to 10 s, dense where a healthy unary call lands.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often the histograms' samples are moved into their buckets (`run_upkeep`). A
/// histogram keeps each sample in a lock-free list until then, and moving them runs on the
/// runtime's worker between calls. Every 5 s (the exporter's own default) that was ~420,000
/// samples per series at 84,000 calls/s: ~5 ms in which no call was served (`perf`), a tail
/// episode of its own on a busy server, and the lists held ~15 MiB (peak RSS 38–45 MiB).
/// Every 100 ms the same work comes in pieces fifty times smaller: p99 at 84,400 calls/s
/// 5.05 → 3.29 ms (medians of 6), peak RSS 25–27 MiB (BENCHMARKS.md, session 20).
const UPKEEP_EVERY: Duration = Duration::from_millis(100);

pub use jisu_client::metrics::{
    CODES, ClientMetrics, METADATA, MethodMetrics, MethodTable, Side, UNKNOWN, code_label,
};

/// The trace pipeline's losses, copied from [`otel::SPAN_STATS`] at each scrape.
struct SpanCounters {
    exported: Counter,
    queue_full: Counter,
    export_failed: Counter,
}

/// A metric name and its static label pairs.
type SeriesKey = (&'static str, Vec<(&'static str, &'static str)>);

/// The metrics of one server.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shared with the clients this server makes (their `grpc_client_*` series).
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    server: MethodTable,
    client: ClientMetrics,
    spans: SpanCounters,
    in_flight: Gauge,
    /// Lazily registered series with bounded labels (reasons, kinds).
    dynamic: Mutex<HashMap<SeriesKey, Counter>>,
    process: metrics_process::Collector,
    /// Certificates whose remaining lifetime is exported: name → (gauge, not-after).
    expiries: Mutex<HashMap<&'static str, (Gauge, i64)>>,
    exemplars: super::exemplars::Exemplars,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels(pairs: &[(&'static str, &'static str)]) -> Vec<Label> {
    pairs.iter().map(|(k, v)| Label::new(*k, *v)).collect()
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("non-empty buckets")
            .build_recorder();
        let handle = recorder.handle();
        let recorder = Arc::new(recorder);
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, SharedString::from(help));
        };
        for side in [Side::Server, Side::Client] {
            let name = |metric: &str| format!("grpc_{}_{metric}", side.label());
            let (who, received, sent) = match side {
                Side::Server => ("server", "by the server", "by the server"),
                Side::Client => ("client", "by the client", "by the client"),
            };
            recorder.describe_counter(
                name("started_total").into(),
                None,
                format!("RPCs started on the {who}.").into(),
            );
            recorder.describe_counter(
                name("handled_total").into(),
                None,
                format!("RPCs completed on the {who}, regardless of success or failure.").into(),
            );
            recorder.describe_counter(
                name("msg_received_total").into(),
                None,
                format!("Messages received {received}.").into(),
            );
            recorder.describe_counter(
                name("msg_sent_total").into(),
                None,
                format!("Messages sent {sent}.").into(),
            );
            recorder.describe_histogram(
                name("handling_seconds").into(),
                Some(Unit::Seconds),
                format!("Time from the start of an RPC to its final status, on the {who}.").into(),
            );
        }

        let server = MethodTable::register(recorder.as_ref(), Side::Server);
        let client = ClientMetrics::new(recorder.clone());
        recorder.describe_counter(
            "jisu_client_retries_total".into(),
            None,
            "Calls this process's clients sent again, by reason (unavailable, transport).".into(),
        );
        recorder.describe_gauge(
            "jisu_client_circuit_open".into(),
            None,
            "1 while the circuit to a replica is open (calls to it fail fast).".into(),
        );
        recorder.describe_counter(
            "jisu_rate_limited_total".into(),
            None,
            "Calls refused by the per-caller rate limit.".into(),
        );
        recorder.describe_histogram(
            "jisu_store_operation_seconds".into(),
            Some(Unit::Seconds),
            "Time a storage operation took, by operation and backend.".into(),
        );
        recorder.describe_counter(
            "jisu_otel_spans_exported_total".into(),
            None,
            "Spans the OTLP exporter delivered.".into(),
        );
        recorder.describe_counter(
            "jisu_otel_spans_dropped_total".into(),
            None,
            "Spans lost: queue_full (the collector is slower than the traffic) or \
             export_failed (the collector refused or was unreachable)."
                .into(),
        );
        let spans = SpanCounters {
            exported: recorder
                .register_counter(&Key::from_name("jisu_otel_spans_exported_total"), &METADATA),
            queue_full: recorder.register_counter(
                &Key::from_parts(
                    "jisu_otel_spans_dropped_total",
                    labels(&[("reason", "queue_full")]),
                ),
                &METADATA,
            ),
            export_failed: recorder.register_counter(
                &Key::from_parts(
                    "jisu_otel_spans_dropped_total",
                    labels(&[("reason", "export_failed")]),
                ),
                &METADATA,
            ),
        };
        let in_flight =
            recorder.register_gauge(&Key::from_name("jisu_grpc_server_in_flight"), &METADATA);
        recorder.describe_gauge(
            "jisu_grpc_server_in_flight".into(),
            None,
            "RPCs being handled right now.".into(),
        );
        recorder.describe_counter(
            "jisu_authz_decisions_total".into(),
            None,
            "Authorization decisions, by decision (allow, deny) and deciding rule (default: no rule matched).".into(),
        );
        recorder.describe_gauge(
            "jisu_store_up".into(),
            None,
            "1 while the storage backend answers its health probe, 0 while it does not.".into(),
        );
        recorder.describe_gauge(
            "jisu_store_pool_connections".into(),
            None,
            "Connections of the database pool, by state (in_use, idle).".into(),
        );
        recorder.describe_gauge(
            "jisu_build_info".into(),
            None,
            "Always 1; the labels name the running version.".into(),
        );
        recorder.describe_gauge(
            "jisu_tls_certificate_expiry_seconds".into(),
            Some(Unit::Seconds),
            "Seconds until the certificate expires (negative once expired).".into(),
        );
        describe(
            "jisu_credential_reload_total",
            None,
            "Credential reloads (kind tls or jwt) by result (ok, or error: the last good set kept).",
        );
        describe(
            "jisu_traces_kept_total",
            None,
            "Calls whose SERVER span was exported, by reason: head (sampled), error or slow (kept after head sampling dropped them).",
        );
        describe(
            "jisu_debug_traces_bytes",
            None,
            "Bytes held by the in-memory store of recent kept traces (failed, slow and sampled calls) behind /debug/traces and jisu trace.",
        );
        describe(
            "jisu_auth_failures_total",
            None,
            "Calls refused by bearer-token auth, by bounded reason.",
        );
        describe(
            "jisu_connections_closed_total",
            None,
            "Connections the server closed for abuse, by reason (rapid_reset: most recent calls cancelled by the client).",
        );
        describe(
            "jisu_tls_handshakes_refused_total",
            None,
            "TLS connections that never became a connection (timeout, failed, no_identity, too_many_handshakes).",
        );
        let build = Key::from_parts(
            "jisu_build_info",
            labels(&[("version", env!("CARGO_PKG_VERSION"))]),
        );
        recorder.register_gauge(&build, &METADATA).set(1.0);
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        Self {
            inner: Arc::new(Inner {
                recorder,
                handle,
                server,
                client,
                spans,
                in_flight,
                dynamic: Mutex::new(HashMap::new()),
                process,
                expiries: Mutex::new(HashMap::new()),
                exemplars: Default::default(),
            }),
        }
    }

    /// The server-side series of the method at `index` ([`crate::api::served_index`]);
    /// paths nothing serves share one set of series, so random paths cannot grow the
    /// series count.
    pub fn method_at(&self, index: Option<usize>) -> &Arc<MethodMetrics> {
        self.inner.server.at(index)
    }

    /// The `grpc_client_*` series of the calls this process makes (give it to a client).
    pub fn client(&self) -> ClientMetrics {
        self.inner.client.clone()
    }

    /// `jisu_traces_kept_total{reason}`: calls exported, by why (`head` sampling, or an
    /// `error` or `slow` call kept after head sampling dropped it).
    pub fn traces_kept(&self, reason: &'static str) -> Counter {
        self.counter("jisu_traces_kept_total", &[("reason", reason)])
    }

    pub fn in_flight(&self) -> &Gauge {
        &self.inner.in_flight
    }

    /// `jisu_order_watchers`: open order-update watches (StreamOrderUpdates, TrackOrders).
    pub fn order_watchers(&self) -> Gauge {
        self.inner.recorder.describe_gauge(
            "jisu_order_watchers".into(),
            None,
            "Open order-update watches (StreamOrderUpdates streams and TrackOrders subscriptions)."
                .into(),
        );
        self.inner
            .recorder
            .register_gauge(&Key::from_name("jisu_order_watchers"), &METADATA)
    }

    /// A counter with bounded, static labels (registered on first use).
    pub fn counter(&self, name: &'static str, pairs: &[(&'static str, &'static str)]) -> Counter {
        let mut dynamic = self.inner.dynamic.lock();
        dynamic
            .entry((name, pairs.to_vec()))
            .or_insert_with(|| {
                self.inner
                    .recorder
                    .register_counter(&Key::from_parts(name, labels(pairs)), &METADATA)
            })
            .clone()
    }

    /// A counter whose label values are only known at run time (e.g. policy rule names,
    /// bounded by the policy file).
    pub fn counter_labelled(
        &self,
        name: &'static str,
        pairs: &[(&'static str, String)],
    ) -> Counter {
        let labels: Vec<Label> = pairs
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect();
        self.inner
            .recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// A histogram (seconds, with the latency buckets) with static labels.
    pub fn histogram(
        &self,
        name: &'static str,
        pairs: &[(&'static str, &'static str)],
    ) -> Histogram {
        self.inner
            .recorder
            .register_histogram(&Key::from_parts(name, labels(pairs)), &METADATA)
    }

    /// A gauge with static labels.
    pub fn gauge(&self, name: &'static str, pairs: &[(&'static str, String)]) -> Gauge {
        let labels: Vec<Label> = pairs
            .iter()
            .map(|(k, v)| Label::new(*k, v.clone()))
            .collect();
        self.inner
            .recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// Exports `jisu_tls_certificate_expiry_seconds{cert}`: seconds until `not_after`
    /// (a reloaded certificate replaces the one of the same name).
    pub fn watch_certificate(&self, cert: &'static str, not_after: i64) {
        let gauge = self.gauge(
            "jisu_tls_certificate_expiry_seconds",
            &[("cert", cert.to_owned())],
        );
        self.inner.expiries.lock().insert(cert, (gauge, not_after));
    }

    /// When the watched certificate `cert` expires (Unix seconds), if one is watched.
    pub fn certificate_not_after(&self, cert: &str) -> Option<i64> {
        self.inner.expiries.lock().get(cert).map(|(_, t)| *t)
    }

    /// The Prometheus text exposition, with fresh process and certificate figures.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.inner.recorder, || self.inner.process.collect());
        let stats = &otel::SPAN_STATS;
        let spans = &self.inner.spans;
        spans
            .exported
            .absolute(stats.exported.load(Ordering::Relaxed));
        spans
            .queue_full
            .absolute(stats.dropped_queue_full.load(Ordering::Relaxed));
        spans
            .export_failed
            .absolute(stats.dropped_export_failed.load(Ordering::Relaxed));
        let now = crate::api::unix_now() as i64;
        for (gauge, not_after) in self.inner.expiries.lock().values() {
            gauge.set((not_after - now) as f64);
        }
        self.inner.handle.render()
    }

    /// The exposition in OpenMetrics 1.0, with trace-id exemplars on the server's latency
    /// buckets (what Prometheus asks for first).
    pub fn render_openmetrics(&self) -> String {
        super::exemplars::openmetrics(&self.render(), &self.inner.exemplars)
    }

    /// The exemplars of `grpc_server_handling_seconds`.
    pub fn exemplars(&self) -> &super::exemplars::Exemplars {
        &self.inner.exemplars
    }

    /// Moves the histograms' recorded samples into their buckets every [`UPKEEP_EVERY`],
    /// so that the samples held stay few and each move is short.
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let handle = self.inner.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
