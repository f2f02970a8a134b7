//! `/metrics` scraped over real HTTP after known calls: exact counts, codes, histograms,
//! bounded label values, and promtool's verdict on the live exposition.

use std::{io::Write, process::Stdio, time::Duration};

use crate::common::{ALL_SCOPES, Calls, TestServer, samples, value};
use futures::StreamExt;
use jisu::{
    pb::{GetUserRequest, ListUsersRequest},
    security::certs::{CertificateAuthority, LeafSpec, Usage},
};

const USERS: &str = "jisucloud.v1.UserService";

fn get_user(id: &str) -> GetUserRequest {
    GetUserRequest { user_id: id.into() }
}

#[tokio::test]
async fn red_metrics_count_every_call_by_method_and_code() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let client = server.client(ALL_SCOPES).await;
    let mut users = client.users();
    for _ in 0..3 {
        users.get_user(get_user("USER0001")).await.unwrap();
    }
    for _ in 0..2 {
        users.get_user(get_user("USER0999")).await.unwrap_err();
    }
    let anonymous = server.client_with_token(None).await;
    anonymous
        .users()
        .get_user(get_user("USER0001"))
        .await
        .unwrap_err();
    let mut stream = users
        .list_users(ListUsersRequest {
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(u) = stream.next().await {
        u.unwrap();
    }

    let text = server.scrape().await;
    let s = samples(&text);
    let get = [
        ("grpc_service", USERS),
        ("grpc_method", "GetUser"),
        ("grpc_type", "unary"),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = get.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(value(&s, "grpc_server_started_total", &get), 6.0);
    assert_eq!(
        value(&s, "grpc_server_handled_total", &with(("grpc_code", "OK"))),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "grpc_server_handled_total",
            &with(("grpc_code", "NotFound"))
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "grpc_server_handled_total",
            &with(("grpc_code", "Unauthenticated"))
        ),
        1.0
    );
    assert_eq!(value(&s, "grpc_server_handling_seconds_count", &get), 6.0);
    assert_eq!(
        value(
            &s,
            "grpc_server_handling_seconds_bucket",
            &with(("le", "+Inf"))
        ),
        6.0
    );
    assert_eq!(value(&s, "grpc_server_msg_received_total", &get), 6.0);
    assert_eq!(value(&s, "grpc_server_msg_sent_total", &get), 3.0);

    let list = [
        ("grpc_service", USERS),
        ("grpc_method", "ListUsers"),
        ("grpc_type", "server_stream"),
    ];
    assert_eq!(value(&s, "grpc_server_msg_sent_total", &list), 5.0);
    let mut list_ok = list.to_vec();
    list_ok.push(("grpc_code", "OK"));
    assert_eq!(value(&s, "grpc_server_handled_total", &list_ok), 1.0);

    // Every method is there from the start, at zero.
    let create_order = [
        ("grpc_service", "jisucloud.v1.OrderService"),
        ("grpc_method", "CreateOrder"),
        ("grpc_code", "OK"),
    ];
    assert_eq!(value(&s, "grpc_server_handled_total", &create_order), 0.0);

    assert_eq!(
        value(&s, "jisu_auth_failures_total", &[("reason", "missing")]),
        1.0
    );
    assert_eq!(value(&s, "jisu_grpc_server_in_flight", &[]), 0.0);
    assert_eq!(
        value(
            &s,
            "jisu_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let expiry = value(
        &s,
        "jisu_tls_certificate_expiry_seconds",
        &[("cert", "server")],
    );
    assert!(
        expiry > 300.0 * 86400.0 && expiry <= 366.0 * 86400.0,
        "{expiry}"
    );
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    server.stop().await;
}

#[tokio::test]
async fn random_method_paths_do_not_grow_the_series_count() {
    const PATHS: usize = 10_000;
    let server = TestServer::start().await;
    let client = server.client(ALL_SCOPES).await;
    let token = server.token(ALL_SCOPES);
    let before = samples(&server.scrape().await).len();
    // The issue's figure: 10,000 random paths, 32 in flight at a time.
    let calls = futures::stream::iter(0..PATHS).map(|i| {
        let channel = client.channel();
        let token = token.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            let mut req = tonic::Request::new(GetUserRequest::default());
            req.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let path = format!("/evil.Service{i}/Method{}", rand::random::<u64>());
            let status = grpc
                .unary::<GetUserRequest, GetUserRequest, _>(
                    req,
                    path.parse().unwrap(),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unimplemented);
        }
    });
    calls.buffer_unordered(32).collect::<Vec<()>>().await;
    let text = server.scrape().await;
    let after = samples(&text);
    assert_eq!(after.len(), before, "series count changed");
    assert_eq!(
        value(
            &after,
            "grpc_server_handled_total",
            &[("grpc_service", "unknown"), ("grpc_code", "Unimplemented")]
        ),
        PATHS as f64
    );
    assert!(!text.contains("evil"));
    server.stop().await;
}

#[tokio::test]
async fn health_checks_have_their_own_labels() {
    let server = TestServer::start().await;
    let client = server.client(ALL_SCOPES).await;
    for _ in 0..3 {
        client
            .health()
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap();
    }
    let s = samples(&server.scrape().await);
    let check = [
        ("grpc_service", "grpc.health.v1.Health"),
        ("grpc_method", "Check"),
        ("grpc_type", "unary"),
        ("grpc_code", "OK"),
    ];
    assert_eq!(value(&s, "grpc_server_handled_total", &check), 3.0);
    assert_eq!(
        value(
            &s,
            "grpc_server_handled_total",
            &[("grpc_service", "unknown"), ("grpc_code", "OK")]
        ),
        0.0
    );
    server.stop().await;
}

#[tokio::test]
async fn refused_handshakes_are_counted() {
    let server = TestServer::start().await;
    let other = CertificateAuthority::generate("Another CA").unwrap();
    let leaf = other
        .issue(&LeafSpec::new(
            "client",
            Usage::Client,
            Duration::from_secs(3600),
        ))
        .unwrap();
    let _ = server.connect_with_pem(&leaf.cert, &leaf.key).await;
    // The server counts after it has sent its alert; wait for that event, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = samples(&server.scrape().await);
        let refused: f64 = s
            .iter()
            .filter(|x| x.name == "jisu_tls_handshakes_refused_total")
            .map(|x| x.value)
            .sum();
        if refused >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusal never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

fn promtool() -> std::path::PathBuf {
    let path = std::env::var_os("JISU_PROMTOOL")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/usr/bin/promtool"));
    assert!(
        path.exists(),
        "promtool not found: run scripts/test (installs Debian's prometheus) or set JISU_PROMTOOL"
    );
    path
}

#[tokio::test]
async fn promtool_accepts_the_live_exposition() {
    let server = TestServer::start_with(|s| s.demo_data = true).await;
    let client = server.client(ALL_SCOPES).await;
    client.users().get_user(get_user("USER0001")).await.unwrap();
    let text = server.scrape().await;
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    server.stop().await;
}

#[tokio::test]
async fn store_operations_are_timed() {
    let server = TestServer::start().await;
    let client = server.client(ALL_SCOPES).await;
    let user = client.create_user("Timed", "timed@jisu.dev").await.unwrap();
    for _ in 0..3 {
        client
            .users()
            .get_user(GetUserRequest {
                user_id: user.id.clone(),
            })
            .await
            .unwrap();
    }
    let m = samples(&server.scrape().await);
    let count = |op| {
        value(
            &m,
            "jisu_store_operation_seconds_count",
            &[("operation", op)],
        )
    };
    assert_eq!(count("create_user"), 1.0);
    assert_eq!(count("get_user"), 3.0);
    assert_eq!(
        count("delete_user"),
        0.0,
        "every operation is pre-registered"
    );
    server.stop().await;
}
