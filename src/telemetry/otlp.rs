//! OTLP/gRPC export of the spans Jisu builds from a call's record, encoded straight into
//! the export queue.
//!
//! The SDK's way (a `SpanData` per span, cloned whole by the exporter for a possible
//! retry, then converted into `opentelemetry-proto` messages with a `String` per attribute
//! key and value, then encoded) cost an exported call ~46 allocations and most of what
//! 100 % sampling adds to a call (BENCHMARKS.md). Here a call's spans are written as
//! protobuf bytes once, at the end of the call, into a buffer the export thread sends
//! as one `ExportTraceServiceRequest` per batch: no allocation per span, no copy but the
//! request's. The bytes decode to exactly what the SDK's conversion builds (test
//! `encoded_spans_decode_like_the_sdks_conversion`).
//!
//! Used when traces go uncompressed to an OTLP/gRPC endpoint over plain HTTP/2 (a local
//! collector, Jaeger's 4317); other set-ups (`http/protobuf`, `https://`,
//! `OTEL_EXPORTER_OTLP_COMPRESSION`) keep the SDK's exporter. Reads the standard
//! `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` and `_TIMEOUT`.
use std::{collections::HashMap, time::Duration};

use bytes::{BufMut, Bytes};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::{
    codec::{Codec, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(mut v: u64, out: &mut impl BufMut) {
    while v >= 0x80 {
        out.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn key_len(tag: u64) -> usize {
    varint_len(tag << 3)
}

fn put_key(tag: u64, wire: u64, out: &mut impl BufMut) {
    put_varint(tag << 3 | wire, out);
}

/// The length of a length-delimited field whose content is `n` bytes.
fn field_len(tag: u64, n: usize) -> usize {
    key_len(tag) + varint_len(n as u64) + n
}

fn put_len(tag: u64, n: usize, out: &mut impl BufMut) {
    put_key(tag, LEN, out);
    put_varint(n as u64, out);
}

fn put_bytes(tag: u64, bytes: &[u8], out: &mut impl BufMut) {
    put_len(tag, bytes.len(), out);
    out.put_slice(bytes);
}

/// The OTLP span kinds Jisu's record spans use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// Span flags: the W3C sampled flag, and whether the parent's remoteness is known and is
/// remote (as the SDK's conversion sets them).
const SAMPLED: u32 = 0x01;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// One span to encode, borrowed from the call's record.
#[derive(Debug)]
pub struct Span<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The W3C `tracestate` header, empty when there is none.
    pub trace_state: &'a str,
    pub parent: Option<[u8; 8]>,
    pub parent_is_remote: bool,
    /// The name, in pieces written one after the other (no formatted `String`).
    pub name: [&'a str; 3],
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Attributes encoded once ([`encode_attributes`]: a method's, a connection's), written
    /// first, then [`Span::attributes`].
    pub encoded_attributes: &'a [&'a [u8]],
    pub attributes: &'a [KeyValue],
    /// `Some(description)`: status ERROR; `None`: status UNSET.
    pub error: Option<&'a str>,
}

fn array_len(a: &Array) -> usize {
    match a {
        Array::Bool(v) => v.len() * field_len(1, 2),
        Array::I64(v) => v
            .iter()
            .map(|i| field_len(1, 1 + varint_len(*i as u64)))
            .sum(),
        Array::F64(v) => v.len() * field_len(1, 9),
        Array::String(v) => v
            .iter()
            .map(|s| field_len(1, field_len(1, s.as_str().len())))
            .sum(),
        other => field_len(1, field_len(1, other.to_string().len())),
    }
}

/// The length of an `AnyValue` message.
fn any_len(v: &Value) -> usize {
    match v {
        Value::Bool(_) => 2,
        Value::I64(i) => 1 + varint_len(*i as u64),
        Value::F64(_) => 9,
        Value::String(s) => field_len(1, s.as_str().len()),
        Value::Array(a) => field_len(5, array_len(a)),
        other => field_len(1, other.to_string().len()),
    }
}

fn put_any(v: &Value, out: &mut impl BufMut) {
    match v {
        Value::Bool(b) => {
            put_key(2, VARINT, out);
            out.put_u8(u8::from(*b));
        }
        Value::I64(i) => {
            put_key(3, VARINT, out);
            put_varint(*i as u64, out);
        }
        Value::F64(f) => {
            put_key(4, FIXED64, out);
            out.put_f64_le(*f);
        }
        Value::String(s) => put_bytes(1, s.as_str().as_bytes(), out),
        Value::Array(a) => {
            put_len(5, array_len(a), out);
            put_array(a, out);
        }
        other => put_bytes(1, other.to_string().as_bytes(), out),
    }
}

/// An `ArrayValue`'s content: each element an `AnyValue` in field 1.
fn put_array(a: &Array, out: &mut impl BufMut) {
    fn each(v: Value, out: &mut impl BufMut) {
        put_len(1, any_len(&v), out);
        put_any(&v, out);
    }
    match a {
        Array::Bool(v) => v.iter().for_each(|b| each(Value::Bool(*b), out)),
        Array::I64(v) => v.iter().for_each(|i| each(Value::I64(*i), out)),
        Array::F64(v) => v.iter().for_each(|f| each(Value::F64(*f), out)),
        Array::String(v) => v.iter().for_each(|s| each(Value::String(s.clone()), out)),
        other => each(Value::String(other.to_string().into()), out),
    }
}

/// A `KeyValue`'s length, its value's (`any_len`) given: `put_key_value` needs both.
fn key_value_len(kv: &KeyValue, value: usize) -> usize {
    let key = kv.key.as_str().len();
    (if key > 0 { field_len(1, key) } else { 0 }) + field_len(2, value)
}

fn put_key_value(tag: u64, kv: &KeyValue, out: &mut impl BufMut) {
    let value = any_len(&kv.value); // once: both lengths below need it
    put_len(tag, key_value_len(kv, value), out);
    let key = kv.key.as_str();
    if !key.is_empty() {
        put_bytes(1, key.as_bytes(), out);
    }
    put_len(2, value, out);
    put_any(&kv.value, out);
}

/// `attributes` as [`Span::put`] writes them (each a `Span.attributes` entry), for
/// [`Span::encoded_attributes`].
fn encode_attributes(attributes: &[KeyValue]) -> Box<[u8]> {
    let mut out = Vec::new();
    for kv in attributes {
        put_key_value(9, kv, &mut out);
    }
    out.into_boxed_slice()
}

/// Attributes that every span of a method or of a connection repeats, kept as values (for
/// the SDK's path and the in-memory store) and encoded once (for [`Span::put`]): an
/// exported span copies their bytes instead of encoding them again.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub values: Box<[KeyValue]>,
    pub encoded: Box<[u8]>,
}

impl Attributes {
    pub fn new(values: impl Into<Box<[KeyValue]>>) -> Self {
        let values = values.into();
        let encoded = encode_attributes(&values);
        Self { values, encoded }
    }
}

impl Span<'_> {
    fn name_len(&self) -> usize {
        self.name.iter().map(|p| p.len()).sum()
    }

    fn flags(&self) -> u32 {
        SAMPLED | HAS_IS_REMOTE | if self.parent_is_remote { IS_REMOTE } else { 0 }
    }

    fn status_len(&self) -> usize {
        match self.error {
            // message (2), code ERROR (3)
            Some(m) => {
                (if m.is_empty() {
                    0
                } else {
                    field_len(2, m.len())
                }) + 2
            }
            None => 0,
        }
    }

    /// The length of the `Span` message.
    fn len(&self) -> usize {
        let name = self.name_len();
        field_len(1, 16)
            + field_len(2, 8)
            + if self.trace_state.is_empty() { 0 } else { field_len(3, self.trace_state.len()) }
            + if self.parent.is_some() { field_len(4, 8) } else { 0 }
            + key_len(16) + 4
            + if name > 0 { field_len(5, name) } else { 0 }
            + 2 // kind
            + if self.start_unix_nanos > 0 { 9 } else { 0 }
            + if self.end_unix_nanos > 0 { 9 } else { 0 }
            + self.encoded_attributes.iter().map(|e| e.len()).sum::<usize>()
            + self.attributes.iter().map(|kv| field_len(9, key_value_len(kv, any_len(&kv.value)))).sum::<usize>()
            + field_len(15, self.status_len())
    }

    /// How many bytes [`Span::put`] writes.
    #[cfg(test)]
    pub fn encoded_len(&self) -> usize {
        field_len(2, self.len())
    }

    /// Appends the span as a `ScopeSpans.spans` entry (field 2, length-delimited).
    pub fn put(&self, out: &mut impl BufMut) {
        put_len(2, self.len(), out);
        put_bytes(1, &self.trace_id, out);
        put_bytes(2, &self.span_id, out);
        if !self.trace_state.is_empty() {
            put_bytes(3, self.trace_state.as_bytes(), out);
        }
        if let Some(parent) = &self.parent {
            put_bytes(4, parent, out);
        }
        put_key(16, FIXED32, out);
        out.put_u32_le(self.flags());
        let name = self.name_len();
        if name > 0 {
            put_len(5, name, out);
            for piece in self.name {
                out.put_slice(piece.as_bytes());
            }
        }
        put_key(6, VARINT, out);
        out.put_u8(self.kind as u8);
        if self.start_unix_nanos > 0 {
            put_key(7, FIXED64, out);
            out.put_u64_le(self.start_unix_nanos);
        }
        if self.end_unix_nanos > 0 {
            put_key(8, FIXED64, out);
            out.put_u64_le(self.end_unix_nanos);
        }
        for encoded in self.encoded_attributes {
            out.put_slice(encoded);
        }
        for kv in self.attributes {
            put_key_value(9, kv, out);
        }
        put_len(15, self.status_len(), out);
        if let Some(m) = self.error {
            if !m.is_empty() {
                put_bytes(2, m.as_bytes(), out);
            }
            put_key(3, VARINT, out);
            out.put_u8(2);
        }
    }
}

/// What every request repeats around the spans: the process's resource and Jisu's
/// instrumentation scope, encoded once.
#[derive(Debug, Clone)]
pub struct Framing {
    resource: Vec<u8>,
    resource_schema: String,
    scope: Vec<u8>,
}

impl Framing {
    pub fn new(resource: &opentelemetry_sdk::Resource, scope: &str) -> Self {
        use opentelemetry_proto::{
            tonic::{common::v1::InstrumentationScope, resource::v1::Resource},
            transform::common::tonic::ResourceAttributesWithSchema,
        };
        let r = ResourceAttributesWithSchema::from(resource);
        Self {
            resource: Resource {
                attributes: r.attributes.0,
                dropped_attributes_count: 0,
                entity_refs: vec![],
            }
            .encode_to_vec(),
            resource_schema: r.schema_url.unwrap_or_default(),
            scope: InstrumentationScope {
                name: scope.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    /// An `ExportTraceServiceRequest` holding `spans` (entries written by [`Span::put`]).
    fn request(&self, spans: &[u8]) -> Bytes {
        let scope_spans = field_len(1, self.scope.len()) + spans.len();
        let schema = self.resource_schema.len();
        let resource_spans = field_len(1, self.resource.len())
            + field_len(2, scope_spans)
            + if schema > 0 { field_len(3, schema) } else { 0 };
        let mut out = Vec::with_capacity(field_len(1, resource_spans));
        put_len(1, resource_spans, &mut out);
        put_bytes(1, &self.resource, &mut out);
        put_len(2, scope_spans, &mut out);
        put_bytes(1, &self.scope, &mut out);
        out.put_slice(spans);
        if schema > 0 {
            put_bytes(3, self.resource_schema.as_bytes(), &mut out);
        }
        Bytes::from(out)
    }
}

/// At most this many `Export` requests in flight on the collector's connection.
const EXPORTS_IN_FLIGHT: usize = 4;

/// Sends requests already encoded; decodes the collector's answer.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

/// The OTLP trace service's one method.
const EXPORT_PATH: http::uri::PathAndQuery = http::uri::PathAndQuery::from_static(
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
);

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Raw;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        Raw
    }

    fn decoder(&mut self) -> Self::Decoder {
        Default::default()
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

/// A started export's `done`, called exactly once: with the outcome, or, when the task is
/// dropped before it ends (its runtime shutting down first), with `CANCELLED`, so that no
/// batch's spans go uncounted (neither exported nor dropped).
struct Done<F: FnOnce(Result<u64, tonic::Status>)>(Option<F>);

impl<F: FnOnce(Result<u64, tonic::Status>)> Done<F> {
    fn call(&mut self, result: Result<u64, tonic::Status>) {
        if let Some(done) = self.0.take() {
            done(result);
        }
    }
}

impl<F: FnOnce(Result<u64, tonic::Status>)> Drop for Done<F> {
    fn drop(&mut self) {
        self.call(Err(tonic::Status::cancelled(
            "the export was dropped before it ended (the runtime shut down)",
        )));
    }
}

/// An OTLP/gRPC trace client for encoded requests.
#[derive(Debug, Clone)]
pub struct GrpcExporter {
    grpc: tonic::client::Grpc<Channel>,
    headers: MetadataMap,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    framing: Framing,
    /// A permit per request in flight ([`EXPORTS_IN_FLIGHT`]).
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// `OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`.
fn setting<'a>(env: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    env.get(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
        .or_else(|| env.get(&format!("OTEL_EXPORTER_OTLP_{name}")))
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

/// `key=value` pairs separated by commas, values percent-decoded (the OTLP exporter
/// specification's format); pairs that are not valid gRPC metadata are reported.
pub fn headers(raw: &str, warnings: &mut Vec<String>) -> MetadataMap {
    let mut map = MetadataMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            warnings.push(format!("OTLP header {pair:?} is not key=value: ignored"));
            continue;
        };
        let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
        match (
            MetadataKey::from_bytes(key.trim().to_ascii_lowercase().as_bytes()),
            MetadataValue::try_from(value.as_ref()),
        ) {
            (Ok(k), Ok(v)) => {
                map.insert(k, v);
            }
            _ => warnings.push(format!(
                "OTLP header {:?} is not valid gRPC metadata: ignored",
                key.trim()
            )),
        }
    }
    map
}

impl GrpcExporter {
    /// The client for `endpoint`, or why the SDK's exporter is used instead (said at
    /// start-up as `server_spans`).
    pub fn new(
        endpoint: &str,
        env: &HashMap<String, String>,
        framing: Framing,
        warnings: &mut Vec<String>,
    ) -> Result<Self, &'static str> {
        if !endpoint.starts_with("http://") {
            return Err("not a plain http:// endpoint");
        }
        if setting(env, "COMPRESSION").is_some_and(|c| c != "none") {
            return Err("compression asked for (the SDK's exporter compresses)");
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| "no tokio runtime")?;
        // The export thread blocks on this handle: only a multi-thread runtime drives its
        // I/O and timers without the thread that built it.
        if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err("not a multi-thread tokio runtime");
        }
        let timeout = setting(env, "TIMEOUT")
            .and_then(|t| t.parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|_| "the endpoint is not a valid URI")?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let grpc = tonic::client::Grpc::new(channel);
        let exporter = Self {
            grpc,
            headers: setting(env, "HEADERS")
                .map_or_else(MetadataMap::new, |h| headers(h, warnings)),
            timeout,
            runtime,
            framing,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(EXPORTS_IN_FLIGHT)),
        };
        exporter.connect_early();
        Ok(exporter)
    }

    /// Opens the connection to the collector now, with an empty `Export` (no spans; the
    /// OTLP specification allows it), instead of at the first batch. Connected lazily, the
    /// first batch waited for TCP and HTTP/2 set-up driven by the server's runtime, which
    /// a server started into full load keeps busy with calls: at 100 % sampling and
    /// ~100,000 calls/s on one core the 2,048-span queue overflowed meanwhile (670 spans
    /// dropped in the first second, none after; BENCHMARKS.md, session 18). A task on the
    /// runtime, so the export thread and shutdown never wait for it; a collector that is
    /// down is said by the first real export.
    fn connect_early(&self) {
        let export = self.send(Bytes::new());
        self.runtime.spawn(async move {
            if let Err(e) = export.await {
                tracing::debug!(error = %e, "OTLP collector not reachable yet");
            }
        });
    }

    /// Starts sending `spans` (entries written by [`Span::put`]) as one request, once fewer
    /// than [`EXPORTS_IN_FLIGHT`] are in flight (the calling thread, the export thread,
    /// waits for that); `done` gets its outcome, on the runtime: the count of spans the
    /// collector rejected (a partial success) or why it failed.
    ///
    /// Not waited for, because a request's round trip is driven by the server's runtime,
    /// which under load gets to it between calls: at 100 % sampling and ~100,000 calls/s on
    /// one core one `Export` of 512 spans took 3–8 ms while ~210,000 spans/s were queued,
    /// and with the export thread waiting out each round trip the queue overflowed when a
    /// few came slow in a row (BENCHMARKS.md, session 19). Now the next batch leaves as
    /// soon as it is full.
    pub fn start(
        &self,
        spans: &[u8],
        done: impl FnOnce(Result<u64, tonic::Status>) + Send + 'static,
    ) {
        let Ok(permit) = self
            .runtime
            .block_on(self.in_flight.clone().acquire_owned())
        else {
            return; // Never closed.
        };
        let send = self.send(self.framing.request(spans));
        let mut done = Done(Some(done));
        self.runtime.spawn(async move {
            let result = send.await;
            done.call(result);
            drop(permit);
        });
    }

    /// Waits until every request [`start`](Self::start)ed has ended (its `done` called).
    pub fn wait_all(&self) {
        let _all = self
            .runtime
            .block_on(self.in_flight.acquire_many(EXPORTS_IN_FLIGHT as u32));
    }

    /// One `Export` call with `body` (an encoded `ExportTraceServiceRequest`), bounded by
    /// the exporter's timeout: the count of spans the collector rejected.
    fn send(
        &self,
        body: Bytes,
    ) -> impl std::future::Future<Output = Result<u64, tonic::Status>> + Send + 'static {
        let mut grpc = self.grpc.clone();
        let mut req = tonic::Request::new(body);
        *req.metadata_mut() = self.headers.clone();
        req.set_timeout(self.timeout);
        let timeout = self.timeout;
        async move {
            let call = async {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(format!("OTLP collector: {e}")))?;
                grpc.unary(req, EXPORT_PATH, Raw).await
            };
            let response = tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("OTLP export timed out"))??;
            Ok(response
                .into_inner()
                .partial_success
                .map_or(0, |p| p.rejected_spans.max(0) as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::SpanData;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn attributes() -> Vec<KeyValue> {
        vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.grpc.status_code", 5_i64),
            KeyValue::new("negative", -3_i64),
            KeyValue::new("big", i64::MAX),
            KeyValue::new("ratio", 0.25_f64),
            KeyValue::new("flag", true),
            KeyValue::new("off", false),
            KeyValue::new("empty", ""),
            KeyValue::new("enduser.id", "ü".repeat(100)),
            KeyValue::new("list", Value::Array(Array::I64(vec![1, -1, 300]))),
            KeyValue::new(
                "names",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![1.5]))),
        ]
    }

    fn nanos(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
    }

    /// A batch whose `Export` was started but never ended, because the runtime shut down
    /// first, is still reported (`CANCELLED`), so its spans are counted as dropped, not
    /// lost from the counts. The collector here accepts TCP and never answers.
    #[test]
    fn an_export_dropped_with_its_runtime_still_reports_its_outcome() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let env = HashMap::from([("OTEL_EXPORTER_OTLP_TIMEOUT".to_owned(), "600000".to_owned())]);
        let resource = opentelemetry_sdk::Resource::builder().build();
        let exporter = {
            let _in = runtime.enter();
            GrpcExporter::new(
                &endpoint,
                &env,
                Framing::new(&resource, "jisu"),
                &mut Vec::new(),
            )
            .unwrap()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        exporter.start(b"", move |r| {
            let _ = tx.send(r);
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
        let outcome = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the dropped export reported nothing");
        assert_eq!(outcome.unwrap_err().code(), tonic::Code::Cancelled);
    }

    /// The same span through the SDK's path (SpanData, then opentelemetry-proto's
    /// conversion) and through [`Span::put`] decodes to the same message.
    #[test]
    fn encoded_spans_decode_like_the_sdks_conversion() {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("jisu-test")
            .build();
        let framing = Framing::new(&resource, "jisu");
        let attrs = attributes();
        let start = SystemTime::now();
        let end = start + Duration::from_micros(1234);
        // (parent, parent is remote, error, kind in the SDK, kind here, tracestate)
        type Case<'a> = (
            Option<[u8; 8]>,
            bool,
            Option<&'a str>,
            SpanKind,
            Kind,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (Some([9; 8]), true, None, SpanKind::Server, Kind::Server, ""),
            (
                None,
                false,
                Some("NOT_FOUND"),
                SpanKind::Server,
                Kind::Server,
                "k=v,a=b",
            ),
            (
                Some([7; 8]),
                false,
                Some(""),
                SpanKind::Client,
                Kind::Client,
                "",
            ),
            (
                Some([7; 8]),
                false,
                None,
                SpanKind::Internal,
                Kind::Internal,
                "",
            ),
        ];
        let mut ours = Vec::new();
        let mut sdk = Vec::new();
        for (i, (parent, remote, error, sdk_kind, kind, state)) in cases.into_iter().enumerate() {
            let trace_id = [i as u8 + 1; 16];
            let span_id = [i as u8 + 0x40; 8];
            let attributes = &attrs[..attrs.len() - i];
            // Some attributes encoded beforehand, in two pieces (none in the first case).
            let (before, after) = attributes.split_at((3 * i).min(attributes.len()));
            let (one, two) = before.split_at(before.len() / 2);
            let encoded = [encode_attributes(one), encode_attributes(two)];
            let encoded = [&*encoded[0], &*encoded[1]];
            let span = Span {
                trace_id,
                span_id,
                trace_state: state,
                parent,
                parent_is_remote: remote,
                name: ["jisucloud.v1.UserService", "/", "GetUser"],
                kind,
                start_unix_nanos: nanos(start),
                end_unix_nanos: nanos(end),
                encoded_attributes: &encoded,
                attributes: after,
                error,
            };
            let before = ours.len();
            span.put(&mut ours);
            assert_eq!(ours.len() - before, span.encoded_len(), "case {i}");
            let trace_state = if state.is_empty() {
                opentelemetry::trace::TraceState::NONE
            } else {
                state.parse().unwrap()
            };
            sdk.push(SpanData {
                span_context: SpanContext::new(
                    TraceId::from_bytes(trace_id),
                    SpanId::from_bytes(span_id),
                    TraceFlags::SAMPLED,
                    false,
                    trace_state,
                ),
                parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
                parent_span_is_remote: remote,
                span_kind: sdk_kind,
                name: "jisucloud.v1.UserService/GetUser".into(),
                start_time: start,
                end_time: end,
                attributes: attributes.to_vec(),
                dropped_attributes_count: 0,
                events: Default::default(),
                links: Default::default(),
                status: error.map_or(Status::Unset, |e| Status::error(e.to_owned())),
                instrumentation_scope: opentelemetry::InstrumentationScope::builder("jisu").build(),
            });
        }
        let got = ExportTraceServiceRequest::decode(framing.request(&ours)).unwrap();
        let want = ExportTraceServiceRequest {
            resource_spans:
                opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
                    sdk,
                    &(&resource).into(),
                ),
        };
        assert_eq!(got.resource_spans[0].scope_spans[0].spans.len(), 4);
        assert_eq!(got, want);
    }

    #[test]
    fn varints_and_lengths_agree() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let decoded = out
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, b)| acc | u64::from(b & 0x7f) << (7 * i));
            assert_eq!(decoded, v);
            assert!(out[..out.len() - 1].iter().all(|b| b & 0x80 != 0));
            assert!(out[out.len() - 1] & 0x80 == 0);
        }
    }

    #[test]
    fn headers_are_percent_decoded_and_bad_ones_reported() {
        let mut warnings = Vec::new();
        let map = headers(
            "Authorization=Bearer%20abc , x-team=jisu,broken, bad key=1",
            &mut warnings,
        );
        assert_eq!(map.get("authorization").unwrap(), "Bearer abc");
        assert_eq!(map.get("x-team").unwrap(), "jisu");
        assert_eq!(map.len(), 2);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("\"broken\" is not key=value"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("\"bad key\""), "{warnings:?}");
    }
}
