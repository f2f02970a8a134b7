//! The TLS accept loop: at most a bounded number of handshakes at once (more connections
//! are closed at once and counted), each with a bounded time to finish the mutual-TLS
//! handshake; the caller's identity is read once per connection and travels with it, and
//! a connection's [`phase::Phase`] (what it is told from outside: finish, or close now)
//! travels with it too.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::Semaphore;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

pub mod phase;
pub mod resets;

use phase::Phase;
use resets::StreamResets;

use crate::{
    security::{
        jwt::TokenMemo,
        tls::{SharedAcceptor, cert_thumbprint, peer_identity},
    },
    telemetry::metrics::Metrics,
};

/// Who is on the other end of a connection. Handlers find it in request extensions as
/// `Arc<Peer>`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub remote_addr: SocketAddr,
    pub local_addr: SocketAddr,
    /// URI SAN, else DNS SAN, else CN of the client certificate.
    pub identity: String,
    /// SHA-256 of the client certificate (RFC 8705 thumbprint).
    pub cert_sha256: [u8; 32],
    /// How this connection's calls end (the rapid-reset guard).
    pub resets: Arc<StreamResets>,
    /// What the connection is told from outside its task (maximum age, drain, rapid reset).
    pub phase: Arc<Phase>,
    /// The last bearer token this connection presented, verified.
    pub token: Arc<TokenMemo>,
    /// The connection's part of an exported SERVER span's attributes, built by the first
    /// call that needs them (see [`Peer::span_attributes`]).
    pub attributes: std::sync::OnceLock<crate::telemetry::otlp::Attributes>,
}

impl Peer {
    /// `server.address`, `server.port`, `network.peer.address` and `tls.client.identity`:
    /// the same for every call on the connection, so formatted and encoded once; the
    /// strings are shared, so a call's copy costs reference counts, not allocations.
    pub fn span_attributes(&self) -> &crate::telemetry::otlp::Attributes {
        use opentelemetry::{KeyValue, StringValue};
        let shared = |s: String| StringValue::from(Arc::<str>::from(s));
        self.attributes.get_or_init(|| {
            crate::telemetry::otlp::Attributes::new([
                KeyValue::new("server.address", shared(self.local_addr.ip().to_string())),
                KeyValue::new("server.port", i64::from(self.local_addr.port())),
                KeyValue::new(
                    "network.peer.address",
                    shared(self.remote_addr.ip().to_string()),
                ),
                KeyValue::new(
                    "tls.client.identity",
                    shared(crate::telemetry::recent::bounded(self.identity.clone())),
                ),
            ])
        })
    }
}

/// A mutual-TLS connection that has completed its handshake.
#[derive(Debug)]
pub struct MtlsStream {
    inner: TlsStream<TcpStream>,
    peer: Arc<Peer>,
    /// Until the 24-byte HTTP/2 preface has arrived: when it must have (a client that
    /// finishes TLS and then stalls or sends half a preface holds nothing for long).
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
}

impl MtlsStream {
    /// Who is on the other end.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }
}

/// Length of the HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;

impl Connected for MtlsStream {
    type ConnectInfo = Arc<Peer>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some((left, deadline)) = &mut self.preface {
            let got = buf.filled().len() - before;
            if got >= *left {
                self.preface = None;
            } else {
                *left -= got;
                if result.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                    tracing::debug!(remote_addr = %self.peer.remote_addr, "no HTTP/2 preface in time");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the HTTP/2 preface did not arrive in time",
                    )));
                }
            }
        }
        result
    }
}

impl AsyncWrite for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// TCP keepalive on every accepted connection: a peer that has gone (host down, network
/// cut, a NAT that forgot us) is found within 30 s of silence plus 3 unanswered probes 10 s
/// apart, by the kernel, at no cost per call. (HTTP/2 PINGs would also find a peer whose
/// process hangs, but hyper pays for them at every poll of every connection; the maximum
/// connection age bounds those instead.)
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(30))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// Why a handshake did not produce a connection (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    Timeout,
    Failed,
    NoIdentity,
    /// More handshakes were in progress than allowed: closed before TLS.
    TooMany,
}

impl HandshakeRefusal {
    pub fn label(self) -> &'static str {
        match self {
            HandshakeRefusal::Timeout => "timeout",
            HandshakeRefusal::Failed => "failed",
            HandshakeRefusal::NoIdentity => "no_identity",
            HandshakeRefusal::TooMany => "too_many_handshakes",
        }
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently, at most
/// `max_handshakes` at once (a connection past that is closed at once: handshakes cost CPU,
/// and stalled ones would otherwise pile up without bound), each within
/// `handshake_timeout`; finished connections come out of the returned stream, and no
/// longer count against the bound. The accept task stops when the stream is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: SharedAcceptor,
    handshake_timeout: Duration,
    max_handshakes: usize,
    metrics: Metrics,
) -> ReceiverStream<io::Result<MtlsStream>> {
    let (tx, rx) = mpsc::channel(256);
    let handshakes = Arc::new(Semaphore::new(max_handshakes.max(1)));
    for refusal in [
        HandshakeRefusal::Timeout,
        HandshakeRefusal::Failed,
        HandshakeRefusal::NoIdentity,
        HandshakeRefusal::TooMany,
    ] {
        metrics
            .counter(
                "jisu_tls_handshakes_refused_total",
                &[("reason", refusal.label())],
            )
            .increment(0);
    }
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%remote_addr, "too many TLS handshakes in progress: closed");
                metrics
                    .counter(
                        "jisu_tls_handshakes_refused_total",
                        &[("reason", HandshakeRefusal::TooMany.label())],
                    )
                    .increment(1);
                drop(tcp);
                continue;
            };
            // The TLS configuration of the moment: a reload applies to new connections.
            let acceptor = acceptor.read().clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&KEEPALIVE);
                let done = handshake(tcp, remote_addr, acceptor, handshake_timeout).await;
                drop(permit);
                match done {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(refusal) => {
                        metrics
                            .counter(
                                "jisu_tls_handshakes_refused_total",
                                &[("reason", refusal.label())],
                            )
                            .increment(1);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    tcp: TcpStream,
    remote_addr: SocketAddr,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
) -> Result<MtlsStream, HandshakeRefusal> {
    let local_addr = tcp.local_addr().map_err(|_| HandshakeRefusal::Failed)?;
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Err(_) => {
            tracing::debug!(%remote_addr, "TLS handshake timed out");
            return Err(HandshakeRefusal::Timeout);
        }
        Ok(Err(e)) => {
            tracing::debug!(%remote_addr, error = %e, "TLS handshake refused");
            return Err(HandshakeRefusal::Failed);
        }
        Ok(Ok(tls)) => tls,
    };
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(HandshakeRefusal::NoIdentity)?;
    let identity = peer_identity(cert).ok_or(HandshakeRefusal::NoIdentity)?;
    let resets = Arc::new(StreamResets::default());
    let peer = Arc::new(Peer {
        remote_addr,
        local_addr,
        identity,
        cert_sha256: cert_thumbprint(cert),
        resets,
        phase: Arc::default(),
        token: Arc::default(),
        attributes: Default::default(),
    });
    tracing::debug!(%remote_addr, identity = %peer.identity, "mTLS connection established");
    let deadline = Box::pin(tokio::time::sleep(handshake_timeout));
    Ok(MtlsStream {
        inner: tls,
        peer,
        preface: Some((PREFACE_LEN, deadline)),
    })
}
