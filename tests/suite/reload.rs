//! Credentials replaced on disk while the server runs: a rotated server certificate is used
//! by new handshakes while open connections keep working and no call fails; a broken file
//! keeps the last good set; a CA removed from the bundle and a revoked client certificate
//! are refused from the next handshake on, an expired CRL refuses every client (fail
//! closed); a new JWT key takes over (tokens of the old key are refused from then on).

use std::time::Duration;

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use crate::common::{ALL_SCOPES, Calls, TestServer, assert_refused, samples};
use jisu::{
    pb::GetUserRequest,
    security::{
        certs::{self, CertificateAuthority, LeafSpec, Usage},
        jwt::TokenIssuer,
        revocation,
    },
};
use rustls::AlertDescription;
use rustls_pki_types::ServerName;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

    // Load through the rotation: one long-lived connection and a new connection per
    // call; not one call may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for fresh in [false, true] {
        let (stop, calls, failed) = (stop.clone(), calls.clone(), failed.clone());
        let open = server.client(ALL_SCOPES).await;
        let (endpoint, dir, token) = (
            server.endpoint(),
            server.dir().to_owned(),
            server.token(ALL_SCOPES),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let client = if fresh {
                    let config =
                        jisu::client::ClientConfig::from_certs_dir(&endpoint, &dir, "client")
                            .unwrap()
                            .with_token(token.clone());
                    jisu::client::JisuClient::connect(config).await.unwrap()
                } else {
                    open.clone()
                };
                let ok = client.get_user("USER0001").await.is_ok();
                calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let serial = certs::rotate_server(server.dir(), &[], Some(Duration::from_secs(3600))).unwrap();
    server.wait_for_reload("tls", "ok", 1.0).await;
    let after = served_serial(&server).await;
    assert_ne!(before, after, "new handshakes get the new certificate");
    assert_eq!(
        after.replace(':', "").to_lowercase(),
        serial,
        "the rotated one"
    );
    let at_rotation = calls.load(Ordering::Relaxed);
    while calls.load(Ordering::Relaxed) < at_rotation + 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    println!(
        "rotation under load: {} calls, {} failed",
        calls.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a call failed during rotation"
    );
    get(&open).await.expect("the open connection keeps working");
    get(&server.client(ALL_SCOPES).await)
        .await
        .expect("a new connection works");

    // A broken certificate file: refused, counted, the last good set stays.
    std::fs::write(server.dir().join("server.pem"), "not a certificate").unwrap();
    server.wait_for_reload("tls", "error", 1.0).await;
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
    server.wait_for_reload("jwt", "ok", 1.0).await;

    // The old key's token (even cached) is refused, for its signature.
    crate::common::assert_status(
        get(&client).await,
        Code::Unauthenticated,
        "TOKEN_BAD_SIGNATURE",
    );
    let new_token = TokenIssuer::from_file(&key_path, "jisu", "jisucloud")
        .unwrap()
        .issue("rotated", "users:read", Duration::from_secs(60));
    let fresh = server.client_with_token(Some(new_token)).await;
    get(&fresh).await.expect("the new key's token works");

    // A broken key file: refused, the new key stays.
    std::fs::write(server.dir().join("jwt.pub"), "garbage").unwrap();
    server.wait_for_reload("jwt", "error", 1.0).await;
    get(&fresh).await.expect("the last good key is kept");
}

#[tokio::test]
async fn a_revoked_client_is_refused_from_its_next_handshake_and_an_expired_crl_fails_closed() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let dir = server.dir();
    certs::issue_client(dir, "mallory", None).unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (cert, key) = (read("mallory.pem"), read("mallory.key"));
    let mallory = server.connect_with_pem(&cert, &key).await.unwrap();
    let get = |c: jisu::client::JisuClient| async move { c.get_user("USER0001").await };
    get(mallory)
        .await
        .expect("mallory is served before revocation");

    revocation::revoke(dir, "mallory", revocation::DEFAULT_CRL_VALIDITY).unwrap();
    server.wait_for_reload("tls", "ok", 1.0).await;
    assert_refused(&server, &cert, &key, AlertDescription::CertificateRevoked).await;
    // What was loaded, and when it runs out: the CRL in 7 days, the CA in 10 years.
    let expiry = samples(&server.scrape().await);
    let left = |cert: &str| {
        crate::common::value(
            &expiry,
            "jisu_tls_certificate_expiry_seconds",
            &[("cert", cert)],
        )
    };
    let day = 86400.0;
    assert!(
        (6.9 * day..=7.0 * day).contains(&left("crl")),
        "crl: {}",
        left("crl")
    );
    assert!(
        left("client_ca") > 9.0 * 365.0 * day,
        "client_ca: {}",
        left("client_ca")
    );
    assert!(left("server") > 300.0 * day, "server: {}", left("server"));
    get(server.client(ALL_SCOPES).await)
        .await
        .expect("other clients are still served");

    // A CRL past its nextUpdate: no client of this CA gets in until it is re-signed.
    revocation::update(dir, None, Duration::from_secs(1)).unwrap();
    server.wait_for_reload("tls", "ok", 2.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // let the CRL expire
    // rustls reports an expired CRL as "unknown CA" (as OpenSSL and BoringSSL do).
    assert_refused(
        &server,
        &read("client.pem"),
        &read("client.key"),
        AlertDescription::UnknownCA,
    )
    .await;
    revocation::update(dir, None, revocation::DEFAULT_CRL_VALIDITY).unwrap();
    server.wait_for_reload("tls", "ok", 3.0).await;
    get(server.client(ALL_SCOPES).await)
        .await
        .expect("served again once the CRL is re-signed");
    assert_refused(&server, &cert, &key, AlertDescription::CertificateRevoked).await;
}

#[tokio::test]
async fn removing_or_emptying_the_crl_does_not_unrevoke_anyone() {
    let server = TestServer::start().await;
    let dir = server.dir();
    certs::issue_client(dir, "mallory", None).unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (cert, key) = (read("mallory.pem"), read("mallory.key"));
    revocation::revoke(dir, "mallory", revocation::DEFAULT_CRL_VALIDITY).unwrap();
    server.wait_for_reload("tls", "ok", 1.0).await;
    assert_refused(&server, &cert, &key, AlertDescription::CertificateRevoked).await;

    let crl = read(revocation::CRL_FILE);
    std::fs::remove_file(dir.join(revocation::CRL_FILE)).unwrap();
    server.wait_for_reload("tls", "error", 1.0).await;
    assert_refused(&server, &cert, &key, AlertDescription::CertificateRevoked).await;

    std::fs::write(dir.join(revocation::CRL_FILE), "").unwrap();
    server.wait_for_reload("tls", "error", 2.0).await;
    assert_refused(&server, &cert, &key, AlertDescription::CertificateRevoked).await;

    // A valid CRL again: loaded, and it still names mallory.
    std::fs::write(dir.join(revocation::CRL_FILE), crl).unwrap();
    server.wait_for_reload("tls", "ok", 2.0).await;
    assert_refused(&server, &cert, &key, AlertDescription::CertificateRevoked).await;
    server.stop().await;
}

#[tokio::test]
async fn a_ca_removed_from_the_bundle_is_refused_for_new_connections() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let dir = server.dir();
    let partner = CertificateAuthority::generate("Partner CA").unwrap();
    let leaf = partner
        .issue(&LeafSpec::new(
            "partner",
            Usage::Client,
            Duration::from_secs(3600),
        ))
        .unwrap();
    let ours = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    std::fs::write(
        dir.join("ca.pem"),
        format!("{}\n{}", ours.trim_end(), partner.pem().cert),
    )
    .unwrap();
    server.wait_for_reload("tls", "ok", 1.0).await;
    let client = server
        .connect_with_pem(&leaf.cert, &leaf.key)
        .await
        .unwrap();
    client
        .get_user("USER0001")
        .await
        .expect("the partner CA's client is served while its CA is trusted");

    std::fs::write(dir.join("ca.pem"), &ours).unwrap();
    server.wait_for_reload("tls", "ok", 2.0).await;
    assert_refused(&server, &leaf.cert, &leaf.key, AlertDescription::UnknownCA).await;
    server
        .client(ALL_SCOPES)
        .await
        .get_user("USER0001")
        .await
        .expect("our own clients are still served");
}

#[tokio::test]
async fn health_turns_not_serving_before_the_server_certificate_expires() {
    // Margin two hours: a certificate with one hour left is "about to expire".
    let server = TestServer::start_with(|s| s.tls.expiry_margin_secs = 7200).await;
    let client = server.client(ALL_SCOPES).await;
    let status = || {
        let mut health = client.health();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    let wait_for = |want: ServingStatus, what: &'static str| {
        let status = &status;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while status().await != want as i32 {
                assert!(tokio::time::Instant::now() < deadline, "never {what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(ServingStatus::Serving, "SERVING with a year left").await;

    certs::rotate_server(server.dir(), &[], Some(Duration::from_secs(3600))).unwrap();
    server.wait_for_reload("tls", "ok", 1.0).await;
    wait_for(ServingStatus::NotServing, "NOT_SERVING with an hour left").await;
    let (head, _) = crate::common::http_get(server.metrics_addr, "/ready").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");

    certs::rotate_server(server.dir(), &[], None).unwrap();
    server.wait_for_reload("tls", "ok", 2.0).await;
    wait_for(ServingStatus::Serving, "SERVING again once renewed").await;
}
