//! What the retry loop decides from: the response's status and pushback, whether the
//! method may be sent again, and whether a failed request provably never left.
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;

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
