//! The per-method RPC series with go-grpc-prometheus names (`grpc_{server,client}_*`),
//! registered once on any `metrics` recorder, and the client's own series. The server
//! registers its side on the same types; the exporter (Prometheus) is the caller's choice.
use std::sync::Arc;

use jisu_api::CallType;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use tonic::Code;

pub use jisu_api::{CODES, code_label};

/// Service/method labels for paths outside the method table.
pub use jisu_api::UNKNOWN;

/// Where every series of ours is registered from.
pub static METADATA: Metadata<'static> = Metadata::new("jisu", Level::INFO, Some("jisu"));

/// Which end of a call a series describes (`grpc_server_*` or `grpc_client_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// The series of one method, registered once.
#[derive(Debug, Clone)]
pub struct MethodMetrics {
    pub call_type: CallType,
    /// `jisucloud.v1.UserService` and `GetUser` (`unknown` outside the table).
    pub service: &'static str,
    pub name: &'static str,
    pub started: Counter,
    pub msg_received: Counter,
    pub msg_sent: Counter,
    pub handling: Histogram,
    handled: [Counter; 17],
}

impl MethodMetrics {
    /// Registers the series of one method on `recorder`.
    pub fn register(
        recorder: &dyn Recorder,
        side: Side,
        service: &'static str,
        name: &'static str,
        call_type: CallType,
    ) -> Self {
        let base = [
            ("grpc_type", call_type.label()),
            ("grpc_service", service),
            ("grpc_method", name),
        ];
        let key = |metric: &str, extra: &[(&'static str, &'static str)]| {
            let labels: Vec<Label> = base
                .iter()
                .chain(extra)
                .map(|(k, v)| Label::new(*k, *v))
                .collect();
            Key::from_parts(format!("grpc_{}_{metric}", side.label()), labels)
        };
        MethodMetrics {
            call_type,
            service,
            name,
            started: recorder.register_counter(&key("started_total", &[]), &METADATA),
            msg_received: recorder.register_counter(&key("msg_received_total", &[]), &METADATA),
            msg_sent: recorder.register_counter(&key("msg_sent_total", &[]), &METADATA),
            handling: recorder.register_histogram(&key("handling_seconds", &[]), &METADATA),
            handled: CODES.map(|(_, code)| {
                recorder.register_counter(&key("handled_total", &[("grpc_code", code)]), &METADATA)
            }),
        }
    }

    pub fn handled(&self, code: Code) -> &Counter {
        &self.handled[code as usize]
    }
}

/// Per-method series, keyed by request path (`/pkg.Service/Method`); shared so a call
/// takes one `Arc`. Health and reflection are real, bounded methods with their own labels
/// (as go-grpc-prometheus has them); only paths nothing serves are `unknown`, so random
/// paths cannot grow the series count.
#[derive(Debug)]
pub struct MethodTable(jisu_api::PerMethod<Arc<MethodMetrics>>);

impl MethodTable {
    /// Registers every method of the API (and `unknown`) for `side`.
    pub fn register(recorder: &dyn Recorder, side: Side) -> Self {
        Self(jisu_api::PerMethod::new(|m| {
            let (service, name, call_type) = m.map_or((UNKNOWN, UNKNOWN, CallType::Unary), |m| {
                (m.service, m.name, m.call_type)
            });
            Arc::new(MethodMetrics::register(
                recorder, side, service, name, call_type,
            ))
        }))
    }

    pub fn get(&self, path: &str) -> &Arc<MethodMetrics> {
        self.at(jisu_api::served_index(path))
    }

    /// The series of the method at `index` ([`jisu_api::served_index`]; `None`: unknown).
    pub fn at(&self, index: Option<usize>) -> &Arc<MethodMetrics> {
        self.0.at(index)
    }
}

/// A client's series: `grpc_client_*` per method, `jisu_client_retries_total{reason}` and
/// `jisu_client_circuit_open{endpoint}`, on the recorder the caller chooses (the server
/// passes its own, so its `/metrics` shows the calls it makes). Cheap to clone.
#[derive(Clone)]
pub struct ClientMetrics {
    methods: Arc<MethodTable>,
    recorder: Arc<dyn Recorder + Send + Sync>,
    retried_unavailable: Counter,
    retried_transport: Counter,
}

impl std::fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMetrics").finish_non_exhaustive()
    }
}

impl ClientMetrics {
    pub fn new(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        let retries = |reason: &'static str| {
            recorder.register_counter(
                &Key::from_parts(
                    "jisu_client_retries_total",
                    vec![Label::new("reason", reason)],
                ),
                &METADATA,
            )
        };
        Self {
            methods: Arc::new(MethodTable::register(recorder.as_ref(), Side::Client)),
            retried_unavailable: retries("unavailable"),
            retried_transport: retries("transport"),
            recorder,
        }
    }

    /// The `grpc_client_*` series of the method at `path`.
    pub fn method(&self, path: &str) -> &Arc<MethodMetrics> {
        self.methods.get(path)
    }

    /// Counts a call sent again, by reason (`unavailable` or `transport`).
    pub fn retried(&self, reason: Retry) {
        match reason {
            Retry::Unavailable => self.retried_unavailable.increment(1),
            Retry::Transport => self.retried_transport.increment(1),
        }
    }

    /// `jisu_client_circuit_open{endpoint}`.
    pub fn circuit_open(&self, endpoint: &str) -> Gauge {
        self.recorder.register_gauge(
            &Key::from_parts(
                "jisu_client_circuit_open",
                vec![Label::new("endpoint", endpoint.to_owned())],
            ),
            &METADATA,
        )
    }
}

/// Why a call was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The server answered UNAVAILABLE.
    Unavailable,
    /// The request provably never reached a server.
    Transport,
}
