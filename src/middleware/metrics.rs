//! Observes every RPC: RED metrics (started, handled by final code, messages in and out,
//! the handling-time histogram) and the OpenTelemetry SERVER span, continued from the
//! caller's W3C `traceparent`, with its trace id echoed in `x-trace-id`. Both need the
//! same start, end and final code, so one layer records them. Outermost, so calls refused
//! by auth are counted and traced too.
//!
//! The final code is read from the response: trailers-only responses carry `grpc-status`
//! in the headers, streams in the trailers; a body dropped before its trailers counts
//! as `Canceled`.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Buf;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    api::{self, CallType},
    telemetry::{
        metrics::{MethodMetrics, Metrics, Side, UNKNOWN},
        otel,
    },
    transport::Peer,
};

/// The SERVER span of one call. Only its name and kind are set here: the OTel RPC
/// semantic-convention attributes are recorded when the call ends, and only when the span
/// is sampled (see [`CallRecord::describe`]), because converting a dozen attributes for
/// every call that is never exported was the largest cost of tracing.
fn server_span<B>(req: &Request<B>) -> tracing::Span {
    let path = req.uri().path();
    let span = tracing::info_span!(
        "rpc",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = tracing::field::Empty,
        rpc.service = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        network.peer.address = tracing::field::Empty,
        tls.client.identity = tracing::field::Empty,
        enduser.id = tracing::field::Empty,
        jisu.authz.decision = tracing::field::Empty,
        jisu.authz.rule = tracing::field::Empty,
    );
    // Most calls carry no context: skip the propagator (a global lock) for them.
    let headers = req.headers();
    if headers.contains_key("traceparent") || headers.contains_key("baggage") {
        let parent = otel::extract(headers);
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// The trace id of a span as 32 hex digits (when it has one) and whether it is sampled.
fn trace_id(span: &tracing::Span) -> (Option<http::HeaderValue>, bool) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    let id = sc
        .is_valid()
        .then(|| http::HeaderValue::from_str(&sc.trace_id().to_string()).ok())
        .flatten();
    (id, sc.is_sampled())
}

#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MetricsService<S>
where
    S: Service<Request<MeteredRequest<ReqBody>>, Response = Response<ResBody>>,
    ResBody: Body,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = self.metrics.method(req.uri().path()).clone();
        method.started.increment(1);
        // Unary and server-streaming calls carry exactly one request message; the
        // messages of client and bidi streams are counted as their frames arrive.
        let req = req.map(|body| match method.call_type {
            CallType::Unary | CallType::ServerStream => {
                method.msg_received.increment(1);
                MeteredRequest::new(body, None)
            }
            CallType::ClientStream | CallType::BidiStream => {
                MeteredRequest::new(body, Some(method.msg_received.clone()))
            }
        });
        self.metrics.in_flight().increment(1.0);
        let span = server_span(&req);
        let peer = req.extensions().get::<Arc<Peer>>().cloned();
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        MeteredFuture {
            inner,
            call: Some(CallRecord {
                method: Some(method),
                side: Side::Server,
                in_flight: Some(self.metrics.clone()),
                start: Instant::now(),
                span,
                peer,
            }),
        }
    }
}

/// Records the end of one call exactly once (on completion or drop), on either side.
#[derive(Debug)]
pub(crate) struct CallRecord {
    /// The method's series; `None` for a client that exports no metrics.
    pub(crate) method: Option<Arc<MethodMetrics>>,
    pub(crate) side: Side,
    /// The server's in-flight gauge to decrement.
    pub(crate) in_flight: Option<Metrics>,
    pub(crate) start: Instant,
    pub(crate) span: tracing::Span,
    /// The caller's connection (server side).
    pub(crate) peer: Option<Arc<Peer>>,
}

impl CallRecord {
    /// Records the RPC attributes of a sampled SERVER span.
    fn describe(&self) {
        let (service, method) = self
            .method
            .as_ref()
            .map_or((UNKNOWN, UNKNOWN), |m| (m.service, m.name));
        let span = &self.span;
        span.record("rpc.system", "grpc");
        span.record("rpc.service", service);
        span.record("rpc.method", method);
        if let Some(p) = &self.peer {
            span.record("server.address", tracing::field::display(p.local_addr.ip()));
            span.record("server.port", p.local_addr.port());
            span.record(
                "network.peer.address",
                tracing::field::display(p.remote_addr.ip()),
            );
            span.record("tls.client.identity", p.identity.as_str());
        }
    }

    /// The counter of the messages the response carries: sent by a server, received by
    /// a client.
    fn response_messages(&self) -> Option<&metrics::Counter> {
        self.method.as_ref().map(|m| match self.side {
            Side::Server => &m.msg_sent,
            Side::Client => &m.msg_received,
        })
    }

    fn streams_response(&self) -> bool {
        self.method
            .as_ref()
            .is_some_and(|m| matches!(m.call_type, CallType::ServerStream | CallType::BidiStream))
    }

    pub(crate) fn finish(self, code: Code) {
        drop(FinishOnDrop {
            record: Some(self),
            code,
        });
    }
}

#[derive(Debug)]
struct FinishOnDrop {
    record: Option<CallRecord>,
    code: Code,
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            if let Some(method) = &r.method {
                method.handled(self.code).increment(1);
                method.handling.record(r.start.elapsed().as_secs_f64());
            }
            if let Some(metrics) = &r.in_flight {
                metrics.in_flight().decrement(1.0);
            }
            r.span.record("rpc.grpc.status_code", self.code as i32);
            if self.code != Code::Ok {
                r.span.record("otel.status_code", "ERROR");
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a metered call (either side).
    pub struct MeteredFuture<F> {
        #[pin]
        pub(crate) inner: F,
        pub(crate) call: Option<CallRecord>,
    }

    impl<F> PinnedDrop for MeteredFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before a response: the client went away.
            if let Some(call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.call.as_ref().map(|c| c.span.enter());
            ready!(this.inner.poll(cx))
        };
        let call = this.call.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                let header_code = status_of(response.headers());
                let (mut parts, body) = response.into_parts();
                if call.side == Side::Server {
                    let (id, sampled) = trace_id(&call.span);
                    if let Some(id) = id {
                        parts.headers.insert(api::TRACE_ID, id);
                    }
                    if sampled {
                        call.describe();
                    }
                }
                let record = match header_code {
                    // Trailers-only: the call is over already.
                    Some(code) => {
                        call.finish(code);
                        None
                    }
                    None => Some(call),
                };
                Ok(Response::from_parts(
                    parts,
                    MeteredBody {
                        inner: body,
                        finish: FinishOnDrop {
                            record,
                            code: Code::Cancelled,
                        },
                        frames: FrameCounter::default(),
                    },
                ))
            }
            Err(e) => {
                call.finish(Code::Unavailable);
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts gRPC messages and records the final status.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        finish: FinishOnDrop,
        frames: FrameCounter,
    }
}

/// An empty body with nothing to record (what an interceptor's refusal carries).
impl<B: Default> Default for MeteredBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            finish: FinishOnDrop {
                record: None,
                code: Code::Cancelled,
            },
            frames: FrameCounter::default(),
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = {
            // Streamed responses are produced here: enter the span so their logs carry
            // its ids. A unary response is ready already; entering would only cost.
            let _entered = this
                .finish
                .record
                .as_ref()
                .filter(|r| r.streams_response())
                .map(|r| r.span.enter());
            ready!(this.inner.poll_frame(cx))
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let sent = this.frames.count(data);
                    if let Some(counter) = this
                        .finish
                        .record
                        .as_ref()
                        .and_then(CallRecord::response_messages)
                    {
                        counter.increment(sent);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.finish.code = status_of(trailers).unwrap_or(Code::Unknown);
                    if let Some(r) = this.finish.record.take() {
                        r.finish(this.finish.code);
                    }
                }
            }
            Some(Err(_)) => {
                this.finish.code = Code::Unknown;
            }
            None => {
                // A body that ends without trailers has no status: treat as OK only when
                // the headers said so (handled above), otherwise Unknown.
                this.finish.code = Code::Unknown;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A request body that counts the gRPC messages of a stream as they arrive.
    pub struct MeteredRequest<B> {
        #[pin]
        inner: B,
        counter: Option<metrics::Counter>,
        frames: FrameCounter,
    }
}

impl<B> MeteredRequest<B> {
    /// Counts into `counter` when given; otherwise passes frames through untouched.
    pub fn new(inner: B, counter: Option<metrics::Counter>) -> Self {
        Self {
            inner,
            counter,
            frames: FrameCounter::default(),
        }
    }
}

impl<B: Body> Body for MeteredRequest<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(counter), Some(Ok(frame))) = (this.counter.as_ref(), &frame)
            && let Some(data) = frame.data_ref()
        {
            counter.increment(this.frames.count(data));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body is in the gRPC framing: bytes left of the current message's payload, and
/// the 5-byte prefix of the next message as far as it has arrived (a prefix may be split
/// across DATA frames at any byte).
#[derive(Debug, Default)]
pub(crate) struct FrameCounter {
    frame_left: usize,
    prefix: [u8; 5],
    prefix_len: usize,
}

impl FrameCounter {
    /// The messages whose prefix completes in this data frame.
    fn count(&mut self, data: &impl Buf) -> u64 {
        let chunk = data.chunk();
        let started = self.count_chunk(chunk);
        // Bytes past the first contiguous slice (tonic's frames are contiguous, so this is
        // rare) are skipped as payload.
        let rest = data.remaining() - chunk.len();
        self.frame_left -= self.frame_left.min(rest);
        started
    }

    /// Counts the gRPC messages (flag byte + u32 big-endian length + payload) that start
    /// in `chunk`, keeping a partial prefix for the next chunk.
    fn count_chunk(&mut self, chunk: &[u8]) -> u64 {
        let mut pos = 0usize;
        let mut started = 0;
        while pos < chunk.len() {
            if self.frame_left > 0 {
                let take = self.frame_left.min(chunk.len() - pos);
                self.frame_left -= take;
                pos += take;
                continue;
            }
            let take = (5 - self.prefix_len).min(chunk.len() - pos);
            self.prefix[self.prefix_len..self.prefix_len + take]
                .copy_from_slice(&chunk[pos..pos + take]);
            self.prefix_len += take;
            pos += take;
            if self.prefix_len == 5 {
                started += 1;
                let p = self.prefix;
                self.frame_left = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
                self.prefix_len = 0;
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    fn count_in_pieces(bytes: &[u8], cuts: &[usize]) -> u64 {
        let mut counter = FrameCounter::default();
        let mut from = 0;
        let mut total = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            total += counter.count_chunk(&bytes[from..cut]);
            from = cut;
        }
        total
    }

    #[test]
    fn counts_messages_split_at_every_offset() {
        // Lengths above 255 put non-zero bytes in every position of the prefix, so a lost
        // prefix byte changes the length read (the bug this guards: two 300-byte messages
        // split after 4 prefix bytes counted as 3).
        let mut all = frame(300);
        all.extend(frame(0));
        all.extend(frame(300));
        all.extend(frame(70_000));
        all.extend(frame(3));
        assert_eq!(count_in_pieces(&all, &[]), 5);
        for cut in 0..all.len() {
            assert_eq!(count_in_pieces(&all, &[cut]), 5, "cut at {cut}");
        }
    }

    #[test]
    fn counts_messages_in_any_chunking() {
        // A small property test: random message lengths, random chunk boundaries.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _ in 0..300 {
            let messages = 1 + next(6);
            let mut all = Vec::new();
            for _ in 0..messages {
                all.extend(frame(next(600) as u32));
            }
            let mut cuts: Vec<usize> = (0..next(12))
                .map(|_| next(all.len() as u64) as usize)
                .collect();
            cuts.sort_unstable();
            assert_eq!(count_in_pieces(&all, &cuts), messages, "cuts {cuts:?}");
        }
        // Byte at a time.
        let mut all = frame(300);
        all.extend(frame(300));
        let cuts: Vec<usize> = (1..all.len()).collect();
        assert_eq!(count_in_pieces(&all, &cuts), 2);
    }
}
