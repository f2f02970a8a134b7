//! Assertions that name what they expect: the status code and reason, the TLS alert,
//! the field violations; and one bounded poll for events.
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{TestServer, tls_probe};

/// Polls `check` every 20 ms until it holds; fails the test after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that the server refuses this client certificate in the TLS handshake with
/// exactly `alert` (not "some error": a wrongly accepted certificate must fail the test).
pub async fn assert_refused(
    server: &TestServer,
    cert: &str,
    key: &str,
    alert: rustls::AlertDescription,
) {
    let got =
        tls_probe::handshake_alert(server.addr, &server.dir().join("ca.pem"), Some((cert, key)))
            .await;
    assert_eq!(got, Ok(alert), "the server's answer to this certificate");
}

/// Asserts the code and the `ErrorInfo.reason` of a refusal.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "status: {status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some(reason),
        "status: {status:?}"
    );
    assert_eq!(
        details.error_info().map(|i| i.domain.as_str()),
        Some("jisucloud.v1")
    );
    status
}

/// The fields named by a status's BadRequest violations.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The `x-trace-id` an error carried (every error carries one).
#[track_caller]
pub fn trace_of(status: &Status) -> String {
    status
        .metadata()
        .get(jisu::api::TRACE_ID)
        .expect("x-trace-id on errors")
        .to_str()
        .unwrap()
        .to_owned()
}
