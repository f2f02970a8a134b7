//! Helpers shared by streaming handlers: the caller's deadline applied to a whole stream.
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::time::{Instant, Sleep};
use tonic::{Status, metadata::MetadataMap};

/// The deadline a caller set with `grpc-timeout` (e.g. `250m`, `10S`), if any.
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(Instant::now() + timeout)
}

pin_project_lite::pin_project! {
    /// Ends a response stream with DEADLINE_EXCEEDED once the caller's deadline passes,
    /// so the server stops working for a caller that has given up.
    pub struct Deadline<S> {
        #[pin]
        inner: S,
        sleep: Option<Pin<Box<Sleep>>>,
        expired: bool,
    }
}

/// Wraps `stream` with the deadline from `metadata` (a no-op without one).
pub fn with_deadline<S>(stream: S, metadata: &MetadataMap) -> Deadline<S> {
    Deadline {
        inner: stream,
        sleep: deadline(metadata).map(|at| Box::pin(tokio::time::sleep_until(at))),
        expired: false,
    }
}

impl<S, T> Stream for Deadline<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = this.inner.poll_next(cx) {
            return Poll::Ready(item);
        }
        if let Some(sleep) = this.sleep
            && sleep.as_mut().poll(cx).is_ready()
        {
            *this.expired = true;
            return Poll::Ready(Some(Err(Status::deadline_exceeded(
                "the call's deadline passed before the stream ended",
            ))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_units() {
        let mut m = MetadataMap::new();
        assert!(deadline(&m).is_none());
        for (raw, expect) in [
            ("250m", Duration::from_millis(250)),
            ("10S", Duration::from_secs(10)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("500u", Duration::from_micros(500)),
        ] {
            m.insert("grpc-timeout", raw.parse().unwrap());
            let at = deadline(&m).unwrap();
            let left = at - Instant::now();
            assert!(
                left <= expect && left + Duration::from_millis(50) >= expect,
                "{raw}"
            );
        }
        for bad in ["", "m", "12x", "123456789S"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert!(deadline(&m).is_none(), "{bad}");
        }
    }
}
