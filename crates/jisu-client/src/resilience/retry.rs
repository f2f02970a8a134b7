//! What the retry loop decides from: the response's status and pushback, whether the
//! method may be sent again, and whether a failed request provably never left.
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};
use tonic::{Status, body::Body};

use jisu_api as api;

use crate::causes;

/// `grpc-retry-pushback-ms`: `Some(Some(d))` wait `d`; `Some(None)` do not retry.
pub(super) fn pushback(response: &Response<Body>) -> Option<Option<Duration>> {
    let raw = response.headers().get(api::RETRY_PUSHBACK_MS)?;
    Some(
        raw.to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis),
    )
}

pub(super) fn is_idempotent(req: &Request<Body>) -> bool {
    let path = req.uri().path();
    if req.headers().contains_key(api::IDEMPOTENCY_KEY) {
        return true;
    }
    if let Some(m) = api::served_method(path) {
        return m.idempotent;
    }
    api::method(path).is_some_and(|m| m.idempotent)
}

/// The request provably never reached a server's application, decided from typed facts
/// in the error's source chain, never from its text:
/// - the connection could not be established (tonic's [`tonic::ConnectError`]: DNS, TCP
///   connect, TLS handshake);
/// - the server refused the stream (RST_STREAM with REFUSED_STREAM, RFC 9113 §8.7);
/// - the server's GOAWAY named a last stream id below ours, or arrived before our stream
///   was opened (h2 reports exactly these streams with the remote GOAWAY error; streams
///   the server had taken end with another error when the connection closes).
///
/// Anything else (a reset or closed connection after the request left) may have been
/// applied, so a non-idempotent call is not sent again.
pub(crate) fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    for e in causes(err) {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
    }
    false
}

/// The call's own deadline passed before its answer came. tonic's channel enforces
/// `grpc-timeout` itself and fails the call with [`tonic::TimeoutExpired`], which tonic turns
/// into CANCELLED ("Timeout expired") and our metrics would count as UNAVAILABLE; neither is
/// what happened. A typed fact, like [`never_sent`].
pub(super) fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    causes(err).any(|e| e.is::<tonic::TimeoutExpired>())
}

/// What a caller whose deadline passed gets: DEADLINE_EXCEEDED, as a server would answer.
pub(super) fn deadline_exceeded(timeout: Option<Duration>, endpoint: &str) -> Response<Body> {
    let within = timeout
        .map(|t| format!(" ({} ms)", t.as_millis()))
        .unwrap_or_default();
    tonic::Status::deadline_exceeded(format!(
        "no answer from {endpoint} within the call's deadline{within}"
    ))
    .into_http()
}

/// How much of a unary answer an attempt reads before handing it on: one message at
/// tonic's default limit (4 MiB) and its 5-byte prefix. A larger answer is passed on as it
/// comes, so the caller's decoder applies its own limit and no answer is held whole
/// beyond this; such an answer is not retried if its connection breaks later.
pub(super) const READ_AHEAD: usize = (4 << 20) + 5;

/// How far an attempt reads its answer before handing it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadAhead {
    /// A unary answer: to its end (or [`READ_AHEAD`] bytes).
    Whole,
    /// An idempotent server stream: to its first message (or its end), never further, so
    /// the caller gets each message as it comes and none twice.
    FirstMessage,
}

/// Reads an answer inside its attempt as far as `until` says, so a connection that breaks
/// after the answer's head but before that point is a failed attempt the loop can retry
/// (an idempotent call), not an error the caller meets after the loop has returned.
/// Frames (data, and the trailers that carry `grpc-status`) are handed on unchanged,
/// followed by the rest of the answer as it comes.
pub(super) async fn read_answer(
    response: Response<Body>,
    until: ReadAhead,
) -> Result<Response<Body>, Status> {
    let (parts, mut body) = response.into_parts();
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut read = 0;
    let enough = |read: usize| match until {
        ReadAhead::Whole => read > READ_AHEAD,
        ReadAhead::FirstMessage => read > 0,
    };
    while !enough(read) {
        match body.frame().await {
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, Bytes::len);
                frames.push(frame);
            }
            Some(Err(status)) => return Err(status),
            None => {
                let whole = futures::stream::iter(frames.into_iter().map(Ok::<_, Status>));
                return Ok(Response::from_parts(
                    parts,
                    Body::new(StreamBody::new(whole)),
                ));
            }
        }
    }
    let rest = futures::stream::iter(frames.into_iter().map(Ok)).chain(BodyStream::new(body));
    Ok(Response::from_parts(
        parts,
        Body::new(StreamBody::new(rest)),
    ))
}

/// What the caller gets when the connection broke while an answer was read ahead and the
/// call is not sent again: UNAVAILABLE, saying whether the call may have been applied.
pub(super) fn answer_lost(
    endpoint: &str,
    cause: &Status,
    idempotent: bool,
    attempts: u32,
) -> Response<Body> {
    let why = if idempotent {
        format!("{attempts} attempt(s) made")
    } else {
        "not retried: the method is not idempotent and the call may have been applied".into()
    };
    tonic::Status::unavailable(format!(
        "the connection to {endpoint} broke while its answer was being read ({}); {why}",
        cause.message()
    ))
    .into_http()
}

pub(super) fn unavailable(message: &str) -> Response<Body> {
    tonic::Status::unavailable(message.to_owned()).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::BoxError;

    #[test]
    fn only_typed_facts_say_a_request_was_never_sent() {
        let io = |text: &str| std::io::Error::new(std::io::ErrorKind::ConnectionReset, text);
        let connect: BoxError = Box::new(tonic::ConnectError(Box::new(io("connect refused"))));
        assert!(never_sent(connect.as_ref()));
        // Text that merely sounds like a connection problem proves nothing.
        for text in [
            "connection closed before message completed",
            "connection reset",
            "connection refused",
            "dns error",
        ] {
            let err: BoxError = Box::new(io(text));
            assert!(!never_sent(err.as_ref()), "{text}");
        }
        // A stream error h2 made itself (not the server's refusal) proves nothing either.
        let local: BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert!(!never_sent(local.as_ref()));
    }

    #[tokio::test]
    async fn an_answer_past_the_read_ahead_is_handed_on_before_it_ends_and_arrives_whole() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Status>>();
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..5 {
            tx.unbounded_send(Ok(Frame::data(chunk.clone()))).unwrap();
        }
        let response = Response::new(Body::new(StreamBody::new(rx)));
        // The answer has not ended (its sender is open): this is ready because 5 MiB is past
        // the read-ahead, not because the answer is complete.
        let handed = futures::FutureExt::now_or_never(read_answer(response, ReadAhead::Whole))
            .expect("handed on without waiting for the answer's end")
            .unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"end"))))
            .unwrap();
        tx.unbounded_send(Ok(Frame::trailers(trailers))).unwrap();
        drop(tx);
        let answer = handed.into_body().collect().await.unwrap();
        assert_eq!(answer.trailers().unwrap()["grpc-status"], "0");
        let bytes = answer.to_bytes();
        assert_eq!(bytes.len(), 5 * (1 << 20) + 3);
        assert!(bytes.ends_with(b"\x07end"));
    }

    #[tokio::test]
    async fn a_stream_is_read_ahead_to_its_first_message_and_a_unary_answer_to_its_end() {
        let open_answer = || {
            let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Status>>();
            tx.unbounded_send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x01m"))))
                .unwrap();
            (tx, Response::new(Body::new(StreamBody::new(rx))))
        };
        // One message in, the stream still open: a stream is handed on now...
        let (tx, response) = open_answer();
        let handed =
            futures::FutureExt::now_or_never(read_answer(response, ReadAhead::FirstMessage))
                .expect("a stream is handed on at its first message")
                .unwrap();
        let mut body = handed.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"\0\0\0\0\x01m");
        drop(tx);
        assert!(body.frame().await.is_none());
        // ...a unary answer is not: it may still break before its status.
        let (_tx, response) = open_answer();
        assert!(
            futures::FutureExt::now_or_never(read_answer(response, ReadAhead::Whole)).is_none()
        );
    }

    #[test]
    fn a_deadline_passed_is_told_by_its_type_alone() {
        let expired: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert!(timed_out(expired.as_ref()));
        // Wrapped, as the channel passes it on (tonic's transport error, its source).
        #[derive(Debug)]
        struct Wrapped(BoxError);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(self.0.as_ref())
            }
        }
        let wrapped: BoxError = Box::new(Wrapped(Box::new(tonic::TimeoutExpired(()))));
        assert!(timed_out(wrapped.as_ref()));
        let text: BoxError = Box::new(std::io::Error::other("Timeout expired"));
        assert!(!timed_out(text.as_ref()));
        let answer = deadline_exceeded(Some(Duration::from_millis(300)), "https://a:1");
        let status = tonic::Status::from_header_map(answer.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            status.message(),
            "no answer from https://a:1 within the call's deadline (300 ms)"
        );
    }
}
