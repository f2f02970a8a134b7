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
    server.stop().await;
}
