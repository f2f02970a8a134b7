//! `jisu bench --lean`: gRPC calls straight over one HTTP/2 connection (h2), without a
//! client stack, so that one generator core can load one server core.
//!
//! The Jisu client is what an application uses: a buffered channel, retries, a circuit
//! breaker, balancing, a CLIENT span and client metrics per call. Measured in session 12,
//! that generator spent more CPU per call than the server it loaded (43–60 µs against
//! 37–58 µs): every closed-loop maximum was the generator's, and so was "70 % of the
//! stack's maximum". This driver is what h2load or ghz are to a server: the same bytes on
//! the wire (HEADERS with the bearer token and `grpc-timeout`, then the length-prefixed
//! message; the answer's messages counted by their prefixes, `grpc-status` read from the
//! trailers), none of the client's work. A request's HEADERS and DATA leave in one write,
//! as grpc-go, grpc-java and grpcio send a unary call (tonic's client flushes them apart).
//! Answers are not decoded (their size is reported; `grpc-status` says whether they are
//! right).
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, TE, USER_AGENT},
    uri::{Authority, PathAndQuery, Scheme},
};
use prost::Message;
use tonic::{Code, Status};

use super::{
    Call, Plan, batch_get_users_request, create_order_request, create_user_request,
    get_order_request, get_user_request, list_users_request,
};

/// HTTP/2 windows and buffers as tonic's client (hyper's defaults) sets them, so the
/// server sees the same flow control from either driver.
pub(super) const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub(super) const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const SEND_BUFFER: usize = 400 * 1024;

/// One HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Lean {
    sender: h2::client::SendRequest<Bytes>,
    head: Arc<Head>,
}

/// What every call of a run sends: the request's head, and its body when that does not vary.
pub(super) struct Head {
    scheme: Scheme,
    authority: Authority,
    path: PathAndQuery,
    /// Sent on every call: content-type, te, user-agent, grpc-timeout, the token, `-m`.
    headers: HeaderMap,
    /// The request when it is the same for every call (`--data`, or a default that does
    /// not vary): encoded once.
    fixed: Option<Bytes>,
}

impl Head {
    /// The request's head as h2 takes it.
    pub(super) fn request(&self) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(self.path.clone());
            parts
        })
        .expect("scheme, authority and path");
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// Call number `n` of caller `worker`'s request, length-prefixed.
    pub(super) fn body(&self, plan: &Plan, worker: usize, n: u64) -> Bytes {
        match &self.fixed {
            Some(b) => b.clone(),
            None => body(plan, worker, n),
        }
    }
}

/// A connection to the server, TLS or plaintext.
pub(super) enum Io {
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Plain(tokio::net::TcpStream),
}

impl std::fmt::Debug for Lean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lean")
            .field("authority", &self.head.authority)
            .field("path", &self.head.path)
            .finish_non_exhaustive()
    }
}

/// What one call received.
#[derive(Debug)]
pub struct Received {
    pub messages: u64,
    /// Message bytes (prefixes included).
    pub bytes: usize,
}

impl Lean {
    /// Connects to `endpoint` (`https://host:port` with `tls`, `http://host:port` without)
    /// for `plan`'s calls, with `token` as the bearer token.
    pub async fn connect(
        endpoint: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        token: Option<&str>,
        plan: &Plan,
    ) -> anyhow::Result<Self> {
        let (head, io) = dial(endpoint, tls, token, plan).await?;
        Ok(Self {
            sender: match io {
                Io::Tls(io) => handshake(*io).await?,
                Io::Plain(io) => handshake(io).await?,
            },
            head: Arc::new(head),
        })
    }

    /// Call number `n` of caller `worker`.
    pub async fn call(&self, plan: &Plan, worker: usize, n: u64) -> Result<Received, Status> {
        let body = self.head.body(plan, worker, n);
        tokio::time::timeout(plan.timeout, self.send(body))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    plan.timeout
                )))
            })
    }

    /// The request message this driver sends for call `n` of `worker` (its size).
    pub fn request_len(plan: &Plan) -> usize {
        body(plan, 0, 0).len()
    }

    async fn send(&self, body: Bytes) -> Result<Received, Status> {
        let h2 = |e: h2::Error| Status::from_error(Box::new(e));
        let mut sender = self.sender.clone().ready().await.map_err(h2)?;
        let (response, mut stream) = sender
            .send_request(self.head.request(), false)
            .map_err(h2)?;
        stream.send_data(body, true).map_err(h2)?;
        let (head, mut body) = response.await.map_err(h2)?.into_parts();
        if head.status != StatusCode::OK {
            return Err(Status::unknown(format!(
                "HTTP {} instead of a gRPC answer",
                head.status
            )));
        }
        // Trailers-only: the status is in the headers and nothing follows.
        if let Some(status) = Status::from_header_map(&head.headers) {
            return match status.code() {
                Code::Ok => Ok(Received {
                    messages: 0,
                    bytes: 0,
                }),
                _ => Err(status),
            };
        }
        let mut frames = Messages::default();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            frames.push(&chunk);
        }
        let trailers = body.trailers().await.map_err(h2)?;
        let status = trailers
            .as_ref()
            .and_then(Status::from_header_map)
            .ok_or_else(|| Status::internal("the answer ended without grpc-status"))?;
        if status.code() != Code::Ok {
            return Err(status);
        }
        if frames.have != 0 {
            return Err(Status::internal("the answer ended inside a message"));
        }
        Ok(Received {
            messages: frames.messages,
            bytes: frames.bytes,
        })
    }
}

/// The connection to `endpoint` (`https://host:port` with `tls`, `http://host:port`
/// without; TCP_NODELAY), and what `plan`'s calls send on it, with `token` as the bearer
/// token: [`Lean::connect`] runs h2 on it, [`super::frames`] writes its frames itself.
pub(super) async fn dial(
    endpoint: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<&str>,
    plan: &Plan,
) -> anyhow::Result<(Head, Io)> {
    use anyhow::Context as _;
    let uri: Uri = endpoint
        .parse()
        .with_context(|| format!("endpoint {endpoint:?} is not a URL"))?;
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
    let secure = scheme == Scheme::HTTPS;
    anyhow::ensure!(
        secure == tls.is_some(),
        "endpoint {endpoint}: https needs the client certificate, http is for --insecure"
    );
    let authority = uri
        .authority()
        .cloned()
        .with_context(|| format!("endpoint {endpoint:?} has no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    tcp.set_nodelay(true)?;
    let io = match tls {
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
            let io = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS with {endpoint}"))?;
            Io::Tls(Box::new(io))
        }
        None => Io::Plain(tcp),
    };

    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("jisu-bench/", env!("CARGO_PKG_VERSION"))),
    );
    // gRPC's `TimeoutValue` is at most 8 digits.
    let ms = plan.timeout.as_millis().clamp(1, 99_999_999);
    headers.insert("grpc-timeout", HeaderValue::try_from(format!("{ms}m"))?);
    if let Some(token) = token {
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .context("the token is not a header value")?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    for (k, v) in &plan.metadata {
        headers.append(
            HeaderName::try_from(k.as_str()).with_context(|| format!("-m {k}"))?,
            HeaderValue::try_from(v.as_str()).with_context(|| format!("-m {k}"))?,
        );
    }
    let varies = plan.data.is_none() && matches!(plan.call, Call::GetUser | Call::CreateUser);
    Ok((
        Head {
            scheme,
            authority,
            path: PathAndQuery::from_static(path(plan.call)),
            headers,
            fixed: (!varies).then(|| body(plan, 0, 0)),
        },
        io,
    ))
}

async fn handshake<T>(io: T) -> anyhow::Result<h2::client::SendRequest<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2_builder().handshake::<_, Bytes>(io).await?;
    // Ends when the server closes the connection; calls then fail with its reason.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The client's HTTP/2 settings.
pub(super) fn h2_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .enable_push(false);
    builder
}

fn path(call: Call) -> &'static str {
    match call {
        Call::GetUser => "/jisucloud.v1.UserService/GetUser",
        Call::ListUsers => "/jisucloud.v1.UserService/ListUsers",
        Call::BatchGetUsers => "/jisucloud.v1.UserService/BatchGetUsers",
        Call::CreateUser => "/jisucloud.v1.UserService/CreateUser",
        Call::GetOrder => "/jisucloud.v1.OrderService/GetOrder",
        Call::CreateOrder => "/jisucloud.v1.OrderService/CreateOrder",
        Call::Health => "/grpc.health.v1.Health/Check",
    }
}

/// The call's request, length-prefixed (uncompressed).
fn body(plan: &Plan, worker: usize, n: u64) -> Bytes {
    fn framed(m: &impl Message) -> Bytes {
        let len = m.encoded_len();
        let mut buf = BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        buf.put_u32(len as u32);
        m.encode(&mut buf).expect("capacity reserved");
        buf.freeze()
    }
    match plan.call {
        Call::GetUser => framed(&get_user_request(plan, worker, n)),
        Call::ListUsers => framed(&list_users_request(plan)),
        Call::BatchGetUsers => framed(&batch_get_users_request(plan)),
        Call::CreateUser => framed(&create_user_request(plan, worker, n)),
        Call::GetOrder => framed(&get_order_request(plan)),
        Call::CreateOrder => framed(&create_order_request(plan)),
        Call::Health => framed(&tonic_health::pb::HealthCheckRequest::default()),
    }
}

/// Counts the length-prefixed messages of an answer as its DATA frames arrive.
#[derive(Default)]
pub(super) struct Messages {
    prefix: [u8; 5],
    /// Prefix bytes seen of the current message (5: the prefix is whole).
    pub(super) have: usize,
    /// Payload bytes still to come of the current message.
    left: usize,
    pub(super) messages: u64,
    pub(super) bytes: usize,
}

impl Messages {
    pub(super) fn push(&mut self, mut chunk: &[u8]) {
        self.bytes += chunk.len();
        while !chunk.is_empty() {
            if self.have < 5 {
                let take = (5 - self.have).min(chunk.len());
                self.prefix[self.have..self.have + take].copy_from_slice(&chunk[..take]);
                self.have += take;
                chunk = &chunk[take..];
                if self.have == 5 {
                    let len = u32::from_be_bytes(self.prefix[1..5].try_into().expect("4 bytes"));
                    self.left = len as usize;
                }
            } else {
                let take = self.left.min(chunk.len());
                self.left -= take;
                chunk = &chunk[take..];
            }
            if self.have == 5 && self.left == 0 {
                self.messages += 1;
                self.have = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Messages;

    #[test]
    fn messages_are_counted_across_any_split_of_the_frames() {
        // Three messages: 3 bytes, empty, 1 byte.
        let wire = [0, 0, 0, 0, 3, 7, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9];
        for cut in 0..=wire.len() {
            for cut2 in cut..=wire.len() {
                let mut f = Messages::default();
                f.push(&wire[..cut]);
                f.push(&wire[cut..cut2]);
                f.push(&wire[cut2..]);
                assert_eq!(
                    (f.messages, f.have, f.bytes),
                    (3, 0, wire.len()),
                    "{cut} {cut2}"
                );
            }
        }
        let mut f = Messages::default();
        f.push(&wire[..6]);
        assert_eq!((f.messages, f.have), (0, 5), "inside the first message");
    }
}
