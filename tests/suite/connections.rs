//! A connection's life on the server: at its maximum age it is told to go (GOAWAY) and the
//! calls it carries finish on it; new calls go to a new connection.

use std::{sync::atomic::Ordering, time::Duration};

use crate::attacks::{Raw, frame, request_headers};
use crate::common::{ALL_SCOPES, TestServer, eventually, samples, value};
use jisu::pb::GetUserRequest;
use prost::Message as _;
use tokio::io::AsyncWriteExt as _;

/// `server.max_connection_age_secs` passes while a call is in flight (its request not yet
/// sent in full): the server sends GOAWAY at once (not only when the grace after it is
/// over), and the call in flight is still answered on that connection.
#[tokio::test]
async fn a_connection_at_its_maximum_age_is_told_to_go_and_its_call_in_flight_finishes() {
    let server = TestServer::start_with(|s| {
        s.demo_data = true;
        s.server.max_connection_age_secs = 1;
        // Far longer than the test: a connection closed at age + grace fails it.
        s.server.shutdown_grace_ms = 120_000;
    })
    .await;
    let mut raw = Raw::connect(&server).await;
    let bearer = format!("Bearer {}", server.token(ALL_SCOPES));
    // Stream 1: the request's headers, its message held back.
    raw.writer
        .write_all(&frame(
            0x1,
            0x4,
            1,
            &request_headers(&[("authorization", &bearer)]),
        ))
        .await
        .unwrap();
    raw.writer.flush().await.unwrap();
    eventually("the server's GOAWAY", Duration::from_secs(20), async || {
        raw.goaway.load(Ordering::Relaxed)
    })
    .await;
    assert!(
        !raw.closed.load(Ordering::Relaxed),
        "closed with a call in flight"
    );

    // The message, after the GOAWAY: the call is still served.
    let message = GetUserRequest {
        user_id: "USER0001".into(),
    }
    .encode_to_vec();
    let mut grpc = vec![0];
    grpc.extend((message.len() as u32).to_be_bytes());
    grpc.extend(message);
    raw.writer
        .write_all(&frame(0x0, 0x1, 1, &grpc))
        .await
        .unwrap();
    raw.writer.flush().await.unwrap();
    let ok = [("grpc_method", "GetUser"), ("grpc_code", "OK")];
    eventually(
        "the call in flight answered",
        Duration::from_secs(20),
        async || {
            value(
                &samples(&server.scrape().await),
                "grpc_server_handled_total",
                &ok,
            ) == 1.0
        },
    )
    .await;
    eventually(
        "its answer on the old connection",
        Duration::from_secs(20),
        async || raw.data.load(Ordering::Relaxed) > 0,
    )
    .await;
    // Gone from our side too (it never acknowledged the GOAWAY's PING, so the server
    // would keep it until the grace is over), so the drain has nothing to wait for.
    raw.writer.shutdown().await.unwrap();
    server.stop().await;
}

/// Accepted connections have TCP keepalive (the kernel finds a peer that has gone, at no
/// cost per call): on the server's end of an idle connection `/proc/net/tcp` shows the
/// keepalive timer (kind 2), due within the 30 s of silence it allows.
#[tokio::test]
async fn an_accepted_connection_has_tcp_keepalive() {
    let server = TestServer::start().await;
    let client = server.client(ALL_SCOPES).await;
    client
        .health()
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("served");
    let port = format!(":{:04X}", server.addr.port());
    // sl local_address rem_address st tx:rx tr:tm->when ...: the server's established ends.
    let ours = || {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp (Linux)");
        table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|f| f[1].ends_with(&port) && f[3] == "01")
            .collect::<Vec<_>>()
    };
    // Once the last answer is acknowledged (until then the timer is a retransmit's).
    eventually(
        "the keepalive timer on the server's end",
        Duration::from_secs(10),
        async || {
            let sockets = ours();
            !sockets.is_empty() && sockets.iter().all(|f| f[5].starts_with("02:"))
        },
    )
    .await;
    for fields in ours() {
        let due = u64::from_str_radix(&fields[5][3..], 16).unwrap();
        // In clock ticks (USER_HZ, 100 per second on Linux).
        assert!(due <= 30 * 100, "keepalive due in {due} ticks: {fields:?}");
    }
    server.stop().await;
}
