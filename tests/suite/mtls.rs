//! Mutual TLS: the gRPC port speaks only TLS and refuses clients without a good certificate.

use std::time::Duration;

use crate::common::{Calls, TestServer, assert_refused, tls_probe};
use jisu::security::certs::{CertificateAuthority, LeafSpec, Usage};
use rustls::AlertDescription;
use tonic_health::pb::HealthCheckRequest;

fn server_ca(server: &TestServer) -> CertificateAuthority {
    let read = |f: &str| std::fs::read_to_string(server.dir().join(f)).unwrap();
    CertificateAuthority::from_pem(&read("ca.pem"), &read("ca.key")).unwrap()
}

#[tokio::test]
async fn a_certificate_from_the_ca_with_client_auth_is_accepted() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let ca = server_ca(&server);
    let leaf = ca
        .issue(&LeafSpec::new(
            "billing",
            Usage::Client,
            Duration::from_secs(3600),
        ))
        .unwrap();
    let client = server
        .connect_with_pem(&leaf.cert, &leaf.key)
        .await
        .unwrap();
    let user = client.get_user("USER0001").await.unwrap();
    assert_eq!(user.id, "USER0001");
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let server = TestServer::start().await;
    let answer = tls_probe::handshake_alert(server.addr, &server.dir().join("ca.pem"), None).await;
    assert_eq!(answer, Ok(AlertDescription::CertificateRequired));
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = TestServer::start().await;
    let other = CertificateAuthority::generate("Another CA").unwrap();
    let leaf = other
        .issue(&LeafSpec::new(
            "client",
            Usage::Client,
            Duration::from_secs(3600),
        ))
        .unwrap();
    assert_refused(&server, &leaf.cert, &leaf.key, AlertDescription::UnknownCA).await;
    server.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let server = TestServer::start().await;
    let mut spec = LeafSpec::new("client", Usage::Client, Duration::from_secs(3600));
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let leaf = server_ca(&server).issue(&spec).unwrap();
    assert_refused(
        &server,
        &leaf.cert,
        &leaf.key,
        AlertDescription::CertificateExpired,
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_only_certificate_is_refused_as_a_client() {
    let server = TestServer::start().await;
    let leaf = server_ca(&server)
        .issue(&LeafSpec::new(
            "client",
            Usage::Server,
            Duration::from_secs(3600),
        ))
        .unwrap();
    let wrong_usage = AlertDescription::UnsupportedCertificate;
    assert_refused(&server, &leaf.cert, &leaf.key, wrong_usage).await;
    // (The server's own certificate carries clientAuth too, since orders calls users with
    // it: it is a valid client, which the old version of this test wrongly asserted away.)
    server.stop().await;
}

#[tokio::test]
async fn plaintext_http2_gets_a_tls_alert_not_http2() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    // A TLS alert record (content type 21), never an HTTP/2 SETTINGS frame.
    assert_eq!(answer.first(), Some(&21u8), "answer: {answer:?}");
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_need_mtls_but_no_token() {
    let server = TestServer::start().await;
    let client = server.client_with_token(None).await;
    for service in ["", "jisucloud.v1.UserService", "jisucloud.v1.OrderService"] {
        let reply = client
            .health()
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, 1, "{service:?} SERVING");
    }
    let unknown = client
        .health()
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Reflection v1 and v1alpha both list the Jisu services.
    use tonic_reflection::pb::{v1, v1alpha};
    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(client.channel());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = v1_client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"jisucloud.v1.UserService"), "{names:?}");
    assert!(names.contains(&"jisucloud.v1.OrderService"), "{names:?}");

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(client.channel());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "jisucloud.v1.UserService".into(),
            ),
        ),
    };
    let mut replies = alpha
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{reply:?}"
    );
    server.stop().await;
}

#[test]
fn a_named_certs_dir_that_does_not_exist_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("cerst");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jisu"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen"])
        .args(["127.0.0.1:0", "--database-url", "memory:", "--certs"])
        .arg(&typo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("does not exist") && stderr.contains("jisu certs init"),
        "stderr: {stderr}"
    );
    assert!(!typo.exists(), "no development CA was created");
}
