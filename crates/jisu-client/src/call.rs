//! The record of one RPC, shared by both ends: started, messages each way (counted from
//! the gRPC framing of the bodies), the final code from the headers or trailers, the
//! handling time, and the call's span — recorded exactly once, on completion or on drop
//! (a body dropped before its trailers counts as `Canceled`). What one end adds (the
//! server: the trace id header, span attributes, its in-flight gauge) comes in through
//! [`CallObserver`].
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Buf;
use http::{HeaderMap, Response};
use http_body::{Body, Frame};
use jisu_api::CallType;
use tonic::Code;

use crate::metrics::{MethodMetrics, Side};

/// What one end of a call adds to the shared record.
pub trait CallObserver: Send + 'static {
    /// The response head is known (before the body): a server adds headers here.
    fn response(&mut self, _parts: &mut http::response::Parts) {}

    /// The final status arrived in `headers` (the trailers, or the headers of a
    /// trailers-only response), just before [`CallObserver::finished`].
    fn status(&mut self, _code: Code, _headers: &HeaderMap) {}

    /// The call that started at `start` ended with `code`, `took` later.
    fn finished(&mut self, _code: Code, _start: Instant, _took: std::time::Duration) {}

    /// Whether the call's span is sampled: only then is its final status recorded on it
    /// (recording a field on a span that is never exported costs a dispatch through every
    /// layer for nothing).
    fn sampled(&self) -> bool {
        true
    }
}

/// A client adds nothing.
impl CallObserver for () {}

/// Records the end of one call exactly once (on completion or drop), on either side.
#[derive(Debug)]
pub struct CallRecord<O: CallObserver = ()> {
    /// The method's series; `None` for a client that exports no metrics.
    pub method: Option<Arc<MethodMetrics>>,
    pub side: Side,
    pub start: Instant,
    pub span: tracing::Span,
    /// What this end adds.
    pub observer: O,
}

impl<O: CallObserver> CallRecord<O> {
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

    /// Ends the call with `code`.
    pub fn finish(self, code: Code) {
        drop(FinishOnDrop {
            record: Some(self),
            code,
        });
    }
}

#[derive(Debug)]
struct FinishOnDrop<O: CallObserver> {
    record: Option<CallRecord<O>>,
    code: Code,
}

impl<O: CallObserver> Drop for FinishOnDrop<O> {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            let took = r.start.elapsed();
            if let Some(method) = &r.method {
                method.handled(self.code).increment(1);
                method.handling.record(took.as_secs_f64());
            }
            r.observer.finished(self.code, r.start, took);
            if r.observer.sampled() {
                r.span.record("rpc.grpc.status_code", self.code as i32);
                if self.code != Code::Ok {
                    r.span.record("otel.status_code", "ERROR");
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of a metered call (either side).
    pub struct MeteredFuture<F, O: CallObserver = ()> {
        #[pin]
        inner: F,
        call: Option<CallRecord<O>>,
    }

    impl<F, O: CallObserver> PinnedDrop for MeteredFuture<F, O> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before a response: the client went away.
            if let Some(call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

/// `grpc-status`, named once: a `&str` name is parsed again at every lookup.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The gRPC status of a response's headers or trailers, if they carry one.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
}

impl<F, O: CallObserver> MeteredFuture<F, O> {
    /// Records `call` when `inner` resolves, or when dropped before.
    pub fn new(inner: F, call: CallRecord<O>) -> Self {
        Self {
            inner,
            call: Some(call),
        }
    }
}

impl<F, B, E, O> Future for MeteredFuture<F, O>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    O: CallObserver,
{
    type Output = Result<Response<MeteredBody<B, O>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.call.as_ref().map(|c| c.span.enter());
            ready!(this.inner.poll(cx))
        };
        let mut call = this.call.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                let header_code = status_of(response.headers());
                let (mut parts, body) = response.into_parts();
                call.observer.response(&mut parts);
                let record = match header_code {
                    // Trailers-only: the call is over already.
                    Some(code) => {
                        call.observer.status(code, &parts.headers);
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
    pub struct MeteredBody<B, O: CallObserver = ()> {
        #[pin]
        inner: B,
        finish: FinishOnDrop<O>,
        frames: FrameCounter,
    }
}

/// An empty body with nothing to record (what an interceptor's refusal carries).
impl<B: Default, O: CallObserver> Default for MeteredBody<B, O> {
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

impl<B: Body, O: CallObserver> Body for MeteredBody<B, O> {
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
                    if let Some(mut r) = this.finish.record.take() {
                        r.observer.status(this.finish.code, trailers);
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
pub struct FrameCounter {
    frame_left: usize,
    prefix: [u8; 5],
    prefix_len: usize,
}

impl FrameCounter {
    /// The messages whose prefix completes in this data frame.
    pub fn count(&mut self, data: &impl Buf) -> u64 {
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
