//! HTTP/2 and TLS abuse against a live server, each with a legitimate client calling beside
//! the attacker: the attacker's connection is closed, the legitimate client is served.
//! The attacks speak raw HTTP/2 frames over mutual TLS (a real client certificate, so they
//! get past TLS like an authenticated but hostile peer would).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::common::{ALL_SCOPES, Calls, TestServer, samples, value};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal without indexing, new name" (no Huffman), for names and values < 127.
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    hpack_len(out, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A string length with a 7-bit prefix (HPACK integer).
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A GetUser request header block; `extra` headers are appended as they are.
pub(crate) fn request_headers(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![0x83, 0x87]; // :method POST, :scheme https
    literal(&mut h, ":path", "/jisucloud.v1.UserService/GetUser");
    literal(&mut h, ":authority", "localhost");
    literal(&mut h, "content-type", "application/grpc");
    literal(&mut h, "te", "trailers");
    for (k, v) in extra {
        literal(&mut h, k, v);
    }
    h
}

/// A mutual-TLS connection speaking raw HTTP/2; a reader task drains what the server
/// sends and notes a GOAWAY, the DATA bytes received and the end of the connection.
pub(crate) struct Raw {
    pub writer: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    pub goaway: Arc<AtomicBool>,
    pub data: Arc<AtomicU64>,
    pub closed: Arc<AtomicBool>,
}

impl Raw {
    pub async fn connect(server: &TestServer) -> Raw {
        let stream = tls(server).await;
        let (mut reader, mut writer) = tokio::io::split(stream);
        writer.write_all(PREFACE).await.unwrap();
        writer.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
        let (goaway, data, closed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (g, d, c) = (goaway.clone(), data.clone(), closed.clone());
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            loop {
                if reader.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                match head[3] {
                    0x0 => _ = d.fetch_add(len as u64, Ordering::Relaxed),
                    0x7 => g.store(true, Ordering::Relaxed),
                    _ => {}
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).await.is_err() {
                    break;
                }
            }
            c.store(true, Ordering::Relaxed);
        });
        Raw {
            writer,
            goaway,
            data,
            closed,
        }
    }

    /// Sends frames until the server closes the connection (true) or `max` is reached.
    async fn flood(&mut self, max: u32, mut next: impl FnMut(u32) -> Vec<u8>) -> bool {
        for i in 0..max {
            if self.closed.load(Ordering::Relaxed) {
                return true;
            }
            if self.writer.write_all(&next(2 * i + 1)).await.is_err() {
                return true;
            }
        }
        let _ = self.writer.flush().await;
        self.wait_closed(Duration::from_secs(10)).await
    }

    async fn wait_closed(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.closed.load(Ordering::Relaxed) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

async fn tls(server: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_over(server, TcpStream::connect(server.addr).await.unwrap()).await
}

/// A mutual-TLS client connection (ALPN h2) over `io`, already connected to the server.
pub(crate) async fn tls_over<IO>(server: &TestServer, io: IO) -> tokio_rustls::client::TlsStream<IO>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let dir = server.dir();
    let mut config = (*jisu::security::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("client.pem"),
        &dir.join("client.key"),
    )
    .unwrap())
    .clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await
        .unwrap()
}

/// Runs `attack` while a legitimate client calls in a loop (it is served before, during
/// and after the attack); returns whether the attack's connection closed, and the
/// bystander's successes and failures.
async fn with_bystander<F: std::future::Future<Output = bool>>(
    server: &TestServer,
    attack: F,
) -> (bool, u64, u64) {
    let client = server.client(ALL_SCOPES).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let task = {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client.get_user("USER0001").await;
                if r.is_ok() { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let closed = attack.await;
    let after_attack = ok.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) < after_attack + 5
        && failed.load(Ordering::Relaxed) == 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    (
        closed,
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

async fn server() -> TestServer {
    TestServer::start_with(|s| {
        s.demo_data = true;
        s.tls.handshake_timeout_ms = 300;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_closes_the_attackers_connection() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    let (closed, ok, failed) = with_bystander(&server, async {
        // HEADERS then RST_STREAM(CANCEL) at once, stream after stream (CVE-2023-44487).
        raw.flood(100_000, |id| {
            let mut f = frame(0x1, 0x4, id, &request_headers(&[]));
            f.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
            f
        })
        .await
    })
    .await;
    println!(
        "rapid reset: closed={closed} goaway={}; bystander ok={ok} failed={failed}",
        raw.goaway.load(Ordering::Relaxed)
    );
    assert!(closed, "the attacker's connection was closed");
    assert!(ok > 0 && failed == 0, "bystander ok={ok} failed={failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_flood_closes_the_attackers_connection() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    let (closed, ok, failed) = with_bystander(&server, async {
        // A connection-specific header makes each request malformed: the server resets
        // each stream itself, until it has reset too many and goes away.
        raw.flood(100_000, |id| {
            frame(0x1, 0x5, id, &request_headers(&[("connection", "close")]))
        })
        .await
    })
    .await;
    println!(
        "malformed requests: closed={closed} goaway={}; bystander ok={ok} failed={failed}",
        raw.goaway.load(Ordering::Relaxed)
    );
    assert!(closed, "the attacker's connection was closed");
    assert!(ok > 0 && failed == 0, "bystander ok={ok} failed={failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_close_the_attackers_connection() {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    let big = "x".repeat(20 * 1024);
    let (closed, ok, failed) = with_bystander(&server, async {
        raw.flood(100_000, |id| {
            frame(0x1, 0x5, id, &request_headers(&[("x-big", &big)]))
        })
        .await
    })
    .await;
    println!("oversized headers: closed={closed}; bystander ok={ok} failed={failed}");
    assert!(closed, "the attacker's connection was closed");
    assert!(ok > 0 && failed == 0, "bystander ok={ok} failed={failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_partial_prefaces_are_cut_off() {
    let server = server().await;
    let (closed, ok, failed) = with_bystander(&server, async {
        // 50 TCP connections that never start TLS.
        let mut stalled = Vec::new();
        for _ in 0..50 {
            stalled.push(TcpStream::connect(server.addr).await.unwrap());
        }
        // 5 connections that finish TLS and then send half an HTTP/2 preface.
        let mut partial = Vec::new();
        for _ in 0..5 {
            let mut s = tls(&server).await;
            s.write_all(&PREFACE[..10]).await.unwrap();
            s.flush().await.unwrap();
            partial.push(s);
        }
        let mut all_closed = true;
        for mut s in stalled {
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
            all_closed &= matches!(r, Ok(Ok(0)) | Ok(Err(_)));
        }
        for mut s in partial {
            let mut b = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => continue, // the server's SETTINGS, then the close
                    }
                }
            })
            .await;
            all_closed &= r.unwrap_or(false);
        }
        all_closed
    })
    .await;
    println!(
        "stalled handshakes / partial prefaces: closed={closed}; bystander ok={ok} failed={failed}"
    );
    assert!(closed, "every stalled connection was closed by the server");
    assert!(ok > 0 && failed == 0, "bystander ok={ok} failed={failed}");
    let m = samples(&server.scrape().await);
    assert_eq!(
        value(
            &m,
            "jisu_tls_handshakes_refused_total",
            &[("reason", "timeout")]
        ),
        50.0
    );
}

/// Paced Rapid Reset: HEADERS (a real, authorized GetUser waiting for its body) then
/// RST_STREAM at a steady ~500 pairs/s, a rate the server keeps up with, so HTTP/2's own
/// pending-accept limit never fires. The connection is closed within 2,000 resets, and a
/// client on another connection is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_is_cut_off() {
    paced_rapid_reset(true).await;
}

/// The same without a token: each call is refused by auth before its request is read, so
/// only a look at the request when it is dropped tells that the client reset it (before
/// that, these counted as calls answered, and the connection was never closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_without_a_token_is_cut_off() {
    paced_rapid_reset(false).await;
}

async fn paced_rapid_reset(with_token: bool) {
    let server = server().await;
    let mut raw = Raw::connect(&server).await;
    let auth = format!("Bearer {}", server.token(ALL_SCOPES));
    let sent = Arc::new(AtomicU64::new(0));
    let (closed, ok, failed) = with_bystander(&server, async {
        let mut pace = tokio::time::interval(Duration::from_millis(2));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let token = [("authorization", auth.as_str())];
        let headers = request_headers(if with_token { &token } else { &[] });
        for i in 0..2_000u32 {
            pace.tick().await;
            if raw.closed.load(Ordering::Relaxed) {
                break;
            }
            let id = 2 * i + 1;
            let mut pair = frame(0x1, 0x4, id, &headers);
            pair.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
            if raw.writer.write_all(&pair).await.is_err() {
                break;
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
        raw.wait_closed(Duration::from_secs(10)).await
    })
    .await;
    let sent = sent.load(Ordering::Relaxed);
    println!(
        "paced rapid reset (token: {with_token}): closed={closed} after {sent} pairs; bystander ok={ok} failed={failed}"
    );
    assert!(
        closed,
        "the attacker's connection was closed within 2,000 resets"
    );
    assert!(ok > 0 && failed == 0, "bystander ok={ok} failed={failed}");
    let m = samples(&server.scrape().await);
    assert_eq!(
        value(
            &m,
            "jisu_connections_closed_total",
            &[("reason", "rapid_reset")]
        ),
        1.0
    );
}

/// Concurrent TLS handshakes are bounded: connections past the bound are closed at once
/// and counted, established connections keep being served, and once the stalled
/// handshakes go, new connections get in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handshakes_are_bounded() {
    let server = TestServer::start_with(|s| {
        s.demo_data = true;
        s.tls.handshake_timeout_ms = 60_000;
        s.server.max_concurrent_handshakes = 4;
    })
    .await;
    let established = server.client(ALL_SCOPES).await;
    let get = |client: jisu::client::JisuClient| async move { client.get_user("USER0001").await };
    get(established.clone()).await.expect("served before");
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let too_many = || async {
        value(
            &samples(&server.scrape().await),
            "jisu_tls_handshakes_refused_total",
            &[("reason", "too_many_handshakes")],
        )
    };
    crate::common::eventually(
        "16 connections past the bound refused",
        Duration::from_secs(10),
        async || too_many().await >= 16.0,
    )
    .await;
    assert_eq!(too_many().await, 16.0, "exactly those past the bound of 4");
    get(established.clone())
        .await
        .expect("an established connection is served meanwhile");
    drop(stalled);
    // The four stalled handshakes fail on EOF and free their places.
    let read = |f: &str| std::fs::read_to_string(server.dir().join(f)).unwrap();
    let (cert, key) = (read("client.pem"), read("client.key"));
    crate::common::eventually(
        "a new connection is accepted again",
        Duration::from_secs(10),
        async || match server.connect_with_pem(&cert, &key).await {
            Ok(client) => get(client).await.is_ok(),
            Err(_) => false,
        },
    )
    .await;
}
