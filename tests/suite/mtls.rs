//! Mutual TLS: the gRPC port speaks only TLS and refuses clients without a good certificate.

use std::time::Duration;

use crate::common::{TestServer, assert_refused};
use jisu::{
    pb::GetUserRequest,
    security::certs::{CertificateAuthority, LeafSpec, Usage},
};
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
    let user = client
        .users()
        .get_user(GetUserRequest {
            user_id: "USER0001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.id, "USER0001");
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let server = TestServer::start().await;
    let ca = std::fs::read(server.dir().join("ca.pem")).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = channel {
        let result = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(result.is_err(), "answered without a client certificate");
    }
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
    assert_refused(&server, &leaf.cert, &leaf.key).await;
    server.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let server = TestServer::start().await;
    let mut spec = LeafSpec::new("client", Usage::Client, Duration::from_secs(3600));
    spec.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let leaf = server_ca(&server).issue(&spec).unwrap();
    assert_refused(&server, &leaf.cert, &leaf.key).await;
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
    assert_refused(&server, &leaf.cert, &leaf.key).await;
    // The server's own certificate (serverAuth only) is refused too.
    let read = |f: &str| std::fs::read_to_string(server.dir().join(f)).unwrap();
    assert_refused(&server, &read("server.pem"), &read("server.key")).await;
    server.stop().await;
}

#[tokio::test]
async fn plaintext_http2_gets_no_answer() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = channel {
        let result = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(result.is_err(), "answered plaintext: {result:?}");
    }
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
