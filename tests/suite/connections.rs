//! A connection's life on the server: at its maximum age it is told to go (GOAWAY) and the
//! calls it carries finish on it; new calls go to a new connection.

use std::{sync::atomic::Ordering, time::Duration};

use crate::attacks::{Raw, frame, request_headers};
use crate::common::{ALL_SCOPES, TestServer, eventually, samples, value};
use jisu::pb::GetUserRequest;
use prost::Message as _;
use tokio::io::AsyncWriteExt as _;

/// A GetUser request's message as a gRPC frame (flag, length, protobuf).
fn get_user_message() -> Vec<u8> {
    let message = GetUserRequest {
        user_id: "USER0001".into(),
    }
    .encode_to_vec();
    let mut grpc = vec![0];
    grpc.extend((message.len() as u32).to_be_bytes());
    grpc.extend(message);
    grpc
}

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
    let grpc = get_user_message();
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

/// Counts the TLS records that arrive on a TCP stream (each record's 5-byte header read as
/// the bytes pass; the records' contents are left to TLS).
struct Records {
    tcp: tokio::net::TcpStream,
    records: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of the current record's header still to come, then of its body.
    header: Vec<u8>,
    body: usize,
}

impl tokio::io::AsyncRead for Records {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(std::pin::Pin::new(&mut this.tcp).poll_read(cx, buf))?;
        for &byte in &buf.filled()[before..] {
            if this.body > 0 {
                this.body -= 1;
                continue;
            }
            this.header.push(byte);
            if this.header.len() == 5 {
                this.body = u16::from_be_bytes([this.header[3], this.header[4]]) as usize;
                this.header.clear();
                this.records.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Records {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, data)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Write coalescing (src/startup/cork.rs) is in the server's path: eight calls that reach
/// it together (one TLS record) are answered together (one or two TLS records), where a
/// connection that writes each answer on its own sends one record per call.
///
/// One worker thread (as the benchmarks run the server, `TOKIO_WORKER_THREADS=1`) and the
/// in-memory store keep the count apart from the machine's timing: 1 record in every run,
/// 8 with `Corked` taken out of `serve` or with its flush never waiting. (On SQLite each
/// call waits for the store's threads and answers in a later turn: 3-5 records; with two
/// workers the calls' tasks overlap the connection's: 5-7, and 6-8 without coalescing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn calls_that_arrive_together_are_answered_in_shared_tls_records() {
    use crate::attacks::{PREFACE, tls_over};
    use std::sync::{Arc, atomic::AtomicU64};
    use tokio::io::AsyncReadExt as _;
    const CALLS: u32 = 8;
    // The in-memory store answers at once: on SQLite a call waits for the store's threads,
    // and its answer comes in a later turn whatever the connection does.
    let server = TestServer::start_with_store(
        |s| s.demo_data = true,
        Arc::new(jisu::store::MemoryStore::new()),
    )
    .await;
    let records = Arc::new(AtomicU64::new(0));
    let tcp = Records {
        tcp: tokio::net::TcpStream::connect(server.addr).await.unwrap(),
        records: records.clone(),
        header: Vec::new(),
        body: 0,
    };
    let (mut reader, mut writer) = tokio::io::split(tls_over(&server, tcp).await);
    // Each call's end (its trailers: HEADERS with END_STREAM), by stream id.
    let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut head = [0u8; 9];
        while reader.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).await.is_err() {
                break;
            }
            if head[3] == 0x1 && head[4] & 0x1 != 0 {
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                let _ = ended.send(stream & 0x7fff_ffff);
            }
        }
    });
    let bearer = format!("Bearer {}", server.token(ALL_SCOPES));
    let grpc = get_user_message();
    let call = |stream: u32| {
        let mut frames = frame(
            0x1,
            0x4,
            stream,
            &request_headers(&[("authorization", &bearer)]),
        );
        frames.extend(frame(0x0, 0x1, stream, &grpc));
        frames
    };
    let mut next_end = async || {
        tokio::time::timeout(Duration::from_secs(20), ends.recv())
            .await
            .expect("a call's answer within 20 s")
            .expect("the connection open")
    };
    // The connection's set-up and one call first, so what follows is only answers.
    let mut first = PREFACE.to_vec();
    first.extend(frame(0x4, 0, 0, &[]));
    first.extend(call(1));
    writer.write_all(&first).await.unwrap();
    writer.flush().await.unwrap();
    assert_eq!(next_end().await, 1);
    let before = records.load(Ordering::Relaxed);

    // Eight calls in one write (one TLS record).
    let together: Vec<u8> = (0..CALLS).flat_map(|i| call(3 + 2 * i)).collect();
    writer.write_all(&together).await.unwrap();
    writer.flush().await.unwrap();
    let mut answered = Vec::new();
    for _ in 0..CALLS {
        answered.push(next_end().await);
    }
    answered.sort();
    assert_eq!(answered, (0..CALLS).map(|i| 3 + 2 * i).collect::<Vec<_>>());
    let answers = records.load(Ordering::Relaxed) - before;
    assert!(
        (1..=2).contains(&answers),
        "{CALLS} calls sent together were answered in {answers} TLS records"
    );
}
