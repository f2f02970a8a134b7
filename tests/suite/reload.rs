//! Credentials replaced on disk while the server runs: a rotated server certificate is used
//! by new handshakes while open connections keep working; a broken file keeps the last
//! good set; a new JWT key takes over (tokens of the old key are refused from then on).

use std::time::Duration;

use crate::common::{ALL_SCOPES, TestServer, samples};
use jisu::{
    pb::GetUserRequest,
    security::{
        certs::{self, CertificateAuthority, LeafSpec, Usage},
        jwt::TokenIssuer,
    },
};
use rustls_pki_types::ServerName;
use tonic::Code;

/// The serial number of the certificate the server presents to a new connection.
async fn served_serial(server: &TestServer) -> String {
    let dir = server.dir();
    let config = jisu::security::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("client.pem"),
        &dir.join("client.key"),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    parsed.raw_serial_as_string()
}

fn reloads(text: &str, kind: &str, result: &str) -> f64 {
    samples(text)
        .iter()
        .filter(|s| {
            s.name == "jisu_credential_reload_total"
                && s.labels.get("kind").map(String::as_str) == Some(kind)
                && s.labels.get("result").map(String::as_str) == Some(result)
        })
        .map(|s| s.value)
        .sum()
}

/// Waits (bounded) until the server has counted `n` reloads of `kind` with `result`.
async fn wait_for_reload(server: &TestServer, kind: &str, result: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if reloads(&server.scrape().await, kind, result) >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} reload with result {result}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn new_server_certificate(dir: &std::path::Path) {
    let ca = CertificateAuthority::from_pem(
        &std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(dir.join("ca.key")).unwrap(),
    )
    .unwrap();
    let mut spec = LeafSpec::new("jisu-server", Usage::Service, Duration::from_secs(3600));
    spec.sans = certs::server_sans(&[]);
    let pem = ca.issue(&spec).unwrap();
    certs::write_pair(dir, "server", &pem).unwrap();
}

#[tokio::test]
async fn a_rotated_server_certificate_is_used_by_new_connections() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let open = server.client(ALL_SCOPES).await;
    let get = |c: &jisu::client::JisuClient| {
        let mut users = c.users();
        async move {
            users
                .get_user(GetUserRequest {
                    user_id: "USER0001".into(),
                })
                .await
        }
    };
    get(&open).await.unwrap();
    let before = served_serial(&server).await;

    new_server_certificate(server.dir());
    wait_for_reload(&server, "tls", "ok", 1.0).await;
    let after = served_serial(&server).await;
    assert_ne!(before, after, "new handshakes get the new certificate");
    get(&open).await.expect("the open connection keeps working");
    get(&server.client(ALL_SCOPES).await)
        .await
        .expect("a new connection works");

    // A broken certificate file: refused, counted, the last good set stays.
    std::fs::write(server.dir().join("server.pem"), "not a certificate").unwrap();
    wait_for_reload(&server, "tls", "error", 1.0).await;
    assert_eq!(
        served_serial(&server).await,
        after,
        "the last good set is kept"
    );
    get(&server.client(ALL_SCOPES).await)
        .await
        .expect("new connections still work");
}

#[tokio::test]
async fn a_new_jwt_key_takes_over() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let old_token = server.token("users:read");
    let client = server.client_with_token(Some(old_token)).await;
    let get = |c: &jisu::client::JisuClient| {
        let mut users = c.users();
        async move {
            users
                .get_user(GetUserRequest {
                    user_id: "USER0001".into(),
                })
                .await
        }
    };
    get(&client).await.expect("the old key's token works");

    let pair = certs::jwt_key_pair().unwrap();
    let key_path = server.dir().join("new-jwt.key");
    std::fs::write(&key_path, &pair.key).unwrap();
    std::fs::write(server.dir().join("jwt.pub"), &pair.cert).unwrap();
    wait_for_reload(&server, "jwt", "ok", 1.0).await;

    let status = get(&client).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "old key's token (even cached) refused"
    );
    let new_token = TokenIssuer::from_file(&key_path, "jisu", "jisucloud")
        .unwrap()
        .issue("rotated", "users:read", Duration::from_secs(60));
    let fresh = server.client_with_token(Some(new_token)).await;
    get(&fresh).await.expect("the new key's token works");

    // A broken key file: refused, the new key stays.
    std::fs::write(server.dir().join("jwt.pub"), "garbage").unwrap();
    wait_for_reload(&server, "jwt", "error", 1.0).await;
    get(&fresh).await.expect("the last good key is kept");
}
