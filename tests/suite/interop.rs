//! Interop with third-party peers against the real `jisu` binary: a Python grpcio client
//! (mTLS + bearer token) and grpcurl (reflection v1alpha, then GetUser).
//!
//! Both come from the venv that `scripts/test` installs (`.venv`, or `JISU_PYTHON` /
//! `JISU_GRPCURL`); a missing tool fails the test, it never skips.

use std::{path::Path, process::Command, time::Duration};

use crate::common::{MANIFEST, serve_binary, tool};

use jisu::security::jwt::TokenIssuer;

fn token(certs: &Path, scopes: &str) -> String {
    TokenIssuer::from_file(&certs.join("jwt.key"), "jisu", "jisucloud")
        .unwrap()
        .issue("interop", scopes, Duration::from_secs(300))
}

#[test]
fn python_grpcio_client_calls_over_mtls_with_a_token() {
    let python = tool("JISU_PYTHON", "python");
    let server = serve_binary(&[]);
    let output = Command::new(python)
        .arg(Path::new(MANIFEST).join("tests/interop/grpcio_client.py"))
        .args(["--target", &server.addr, "--proto"])
        .arg(Path::new(MANIFEST).join("proto"))
        .arg("--certs")
        .arg(&server.certs)
        .env(
            "JISU_TOKEN",
            token(
                &server.certs,
                "users:read users:write orders:read orders:write",
            ),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["get_user"]["id"], "USER0001");
    assert_eq!(seen["get_user"]["email"], "user1@jisu.com");
    assert_eq!(seen["created_id"], "USER0101");
    assert_eq!(
        seen["listed"],
        serde_json::json!(["USER0001", "USER0002", "USER0003"])
    );
    assert_eq!(seen["next_page_token"], "USER0003");
    assert_eq!(seen["order_total"], 2.5);
    // TrackOrders driven from Python: pushes, an in-band error, and a clean end.
    let tracked = &seen["tracked"];
    let order = tracked[0]["order"].clone();
    assert_eq!(tracked[0]["status"], "PENDING");
    assert_eq!(
        tracked[1],
        serde_json::json!({"error": "ORD0NOPE000", "code": "NOT_FOUND"})
    );
    assert_eq!(
        tracked[2],
        serde_json::json!({"order": order, "status": "PAID"})
    );
    assert_eq!(
        tracked[3],
        serde_json::json!({"order": order, "status": "CANCELLED"})
    );
    assert_eq!(tracked[4], serde_json::json!({"end": "OK"}));
    assert_eq!(seen["unknown_user"], "NOT_FOUND");
    assert_eq!(seen["no_token"], "UNAUTHENTICATED");
}

#[test]
fn grpcurl_lists_services_by_reflection_and_calls_get_user() {
    let grpcurl = tool("JISU_GRPCURL", "grpcurl");
    let server = serve_binary(&[]);
    let tls = |cmd: &mut Command| {
        cmd.arg("-cacert")
            .arg(server.certs.join("ca.pem"))
            .arg("-cert")
            .arg(server.certs.join("client.pem"))
            .arg("-key")
            .arg(server.certs.join("client.key"));
    };
    let mut list = Command::new(&grpcurl);
    tls(&mut list);
    let listed = list.args([&server.addr, "list"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success(),
        "grpcurl list: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    for service in [
        "jisucloud.v1.UserService",
        "jisucloud.v1.OrderService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            stdout.lines().any(|l| l == service),
            "{service} in {stdout}"
        );
    }

    let mut call = Command::new(&grpcurl);
    tls(&mut call);
    let header = format!(
        "authorization: Bearer {}",
        token(&server.certs, "users:read")
    );
    let got = call
        .args(["-H", &header, "-d", r#"{"user_id":"USER0042"}"#])
        .args([&server.addr, "jisucloud.v1.UserService/GetUser"])
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "grpcurl GetUser: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    let user: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(user["id"], "USER0042");
    assert_eq!(user["email"], "user42@jisu.com");

    // Without the token grpcurl sees the refusal and its code.
    let mut denied = Command::new(&grpcurl);
    tls(&mut denied);
    let denied = denied
        .args(["-d", r#"{"user_id":"USER0042"}"#])
        .args([&server.addr, "jisucloud.v1.UserService/GetUser"])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
}
