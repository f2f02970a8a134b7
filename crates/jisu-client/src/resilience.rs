//! The client's defences, below the generated stubs so every call gets them:
//!
//! - **balancing** over several replicas with power-of-two-choices (fewest calls in flight
//!   of two random candidates);
//! - **health**: a replica whose health check says NOT_SERVING (or fails) is taken out and
//!   probed back in;
//! - **a circuit breaker per replica**: opens after consecutive failures, fails fast while
//!   open, lets one probe through when half-open; state changes are logged and exported;
//! - **retries** only where safe — idempotent methods (GetUser, ListUsers before its first
//!   message, BatchGetUsers, GetOrder, health checks, and any call carrying an
//!   `idempotency-key`) on UNAVAILABLE or a broken transport, and any single-message call
//!   that provably never reached a server (typed facts only, see `never_sent`) — each on
//!   another replica than the one that just failed (when another is usable), with
//!   exponential backoff and full jitter,
//!   at most 5 attempts, `grpc-retry-pushback-ms` honoured, and a retry budget (gRPC A6
//!   token bucket) so retries cannot multiply an outage.
//!
//! Single-message requests are buffered (they are small) so they can be sent again, and an
//! answer is read within its attempt (`retry::read_answer`: a unary one to its end, an
//! idempotent server stream to its first message), so an answer cut after its head and
//! before that is a failed attempt like any other; client and bidi streams are balanced
//! and guarded but never retried.
//!
//! One job per file: [`replica`] (a server, its circuit and the guard a call holds),
//! [`budget`] (the A6 retry throttle), [`retry`] (what a retry is decided from); this file
//! is the balancer and the retry loop.
mod budget;
mod replica;
mod retry;

use crate::call::status_of;
use budget::Budget;
pub use replica::Replica;
use replica::{Admission, Circuit};
pub(crate) use retry::never_sent;
use retry::{
    ReadAhead, answer_lost, deadline_exceeded, is_idempotent, pushback, read_answer, timed_out,
    unavailable,
};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::{Code, body::Body, transport::Channel};
use tower::ServiceExt as _;
use tower_service::Service;

use jisu_api::{self as api, CallType};

use crate::metrics::{ClientMetrics, Retry};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How hard the client tries.
#[derive(Debug, Clone)]
pub struct Resilience {
    /// Attempts per call, the first included (capped at 5).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Consecutive failures that open a replica's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before a probe (doubles on a failed probe).
    pub breaker_cooldown: Duration,
    /// How often each replica's health is checked (only with several replicas).
    pub health_interval: Duration,
    /// Retry budget (A6): tokens, and what a success gives back.
    pub budget_tokens: f64,
    pub budget_ratio: f64,
}

impl Default for Resilience {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(2),
            health_interval: Duration::from_secs(2),
            budget_tokens: 10.0,
            budget_ratio: 0.1,
        }
    }
}

struct Shared {
    replicas: Vec<Arc<Replica>>,
    policy: Resilience,
    budget: Mutex<Budget>,
    metrics: Option<ClientMetrics>,
}

/// The balanced, guarded transport under [`super::JisuClient`].
#[derive(Clone)]
pub struct Resilient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Resilient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilient")
            .field("replicas", &self.shared.replicas.len())
            .finish_non_exhaustive()
    }
}

impl Resilient {
    /// Over `(endpoint, channel)` pairs; checks health in the background when there are
    /// several replicas (the task ends with the last clone of this client).
    pub fn new(
        channels: Vec<(String, Channel)>,
        policy: Resilience,
        metrics: Option<ClientMetrics>,
    ) -> Self {
        let replicas = channels
            .into_iter()
            .map(|(endpoint, channel)| {
                Arc::new(Replica {
                    endpoint,
                    channel,
                    in_flight: AtomicUsize::new(0),
                    healthy: AtomicBool::new(true),
                    circuit: Mutex::new(Circuit::Closed { failures: 0 }),
                    served: AtomicUsize::new(0),
                })
            })
            .collect::<Vec<_>>();
        let budget = Mutex::new(Budget {
            tokens: policy.budget_tokens,
            max: policy.budget_tokens,
            ratio: policy.budget_ratio,
        });
        let shared = Arc::new(Shared {
            replicas,
            policy,
            budget,
            metrics,
        });
        if shared.replicas.len() > 1 {
            tokio::spawn(check_health(Arc::downgrade(&shared)));
        }
        Self { shared }
    }

    pub fn replicas(&self) -> &[Arc<Replica>] {
        &self.shared.replicas
    }
}

async fn check_health(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(s) => s.policy.health_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let checks = shared.replicas.iter().map(|r| {
            let r = r.clone();
            async move {
                let mut health =
                    tonic_health::pb::health_client::HealthClient::new(r.channel.clone());
                let answer = tokio::time::timeout(
                    Duration::from_secs(1),
                    health.check(tonic_health::pb::HealthCheckRequest::default()),
                )
                .await;
                let serving = matches!(&answer, Ok(Ok(reply)) if reply.get_ref().status == 1);
                let was = r.healthy.swap(serving, Ordering::Relaxed);
                if was != serving {
                    if serving {
                        tracing::info!(endpoint = %r.endpoint, "replica healthy again: back in");
                    } else {
                        tracing::warn!(endpoint = %r.endpoint, "replica not serving: taken out");
                    }
                }
            }
        });
        futures::future::join_all(checks).await;
    }
}

impl Shared {
    /// A replica for the next attempt: of the usable ones, not `failed` (the one the call's
    /// last attempt failed on) while another is usable, so a retry goes elsewhere.
    fn pick(&self, failed: Option<&Arc<Replica>>) -> Option<Admission> {
        let now = Instant::now();
        let mut usable: Vec<&Arc<Replica>> =
            self.replicas.iter().filter(|r| r.usable(now)).collect();
        if let Some(failed) = failed
            && usable.len() > 1
        {
            usable.retain(|r| !Arc::ptr_eq(r, failed));
        }
        let choice = match usable.len() {
            0 => return None,
            1 => usable[0],
            n => {
                let a = rand::random_range(0..n);
                let b = (a + 1 + rand::random_range(0..n - 1)) % n;
                let (ra, rb) = (usable[a], usable[b]);
                if ra.in_flight.load(Ordering::Relaxed) <= rb.in_flight.load(Ordering::Relaxed) {
                    ra
                } else {
                    rb
                }
            }
        };
        let probe = choice.admit(now)?;
        Some(Admission::new(choice.clone(), probe))
    }

    fn record(&self, admission: &mut Admission, ok: bool) {
        admission.settled();
        let replica = &*admission.replica;
        let mut c = replica.circuit.lock();
        if ok {
            self.budget.lock().success();
            replica.served.fetch_add(1, Ordering::Relaxed);
            if !matches!(*c, Circuit::Closed { failures: 0 }) {
                if !matches!(*c, Circuit::Closed { .. }) {
                    tracing::info!(endpoint = %replica.endpoint, "circuit closed");
                    self.circuit_gauge(replica, 0.0);
                }
                *c = Circuit::Closed { failures: 0 };
            }
            return;
        }
        self.budget.lock().failure();
        let cooldown = self.policy.breaker_cooldown;
        *c = match *c {
            Circuit::Closed { failures } if failures + 1 >= self.policy.breaker_failures => {
                tracing::warn!(endpoint = %replica.endpoint, failures = failures + 1, "circuit opened");
                self.circuit_gauge(replica, 1.0);
                Circuit::Open {
                    until: Instant::now() + cooldown,
                    cooldown,
                }
            }
            Circuit::Closed { failures } => Circuit::Closed {
                failures: failures + 1,
            },
            Circuit::HalfOpen { .. } | Circuit::Open { .. } => {
                let previous = match *c {
                    Circuit::Open { cooldown, .. } => cooldown,
                    _ => cooldown,
                };
                let next = (previous * 2).min(Duration::from_secs(60));
                tracing::warn!(endpoint = %replica.endpoint, ?next, "probe failed: circuit open again");
                self.circuit_gauge(replica, 1.0);
                Circuit::Open {
                    until: Instant::now() + next,
                    cooldown: next,
                }
            }
        };
    }

    fn circuit_gauge(&self, replica: &Replica, open: f64) {
        if let Some(m) = &self.metrics {
            m.circuit_open(&replica.endpoint).set(open);
        }
    }

    fn count_retry(&self, reason: Retry) {
        if let Some(m) = &self.metrics {
            m.retried(reason);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .policy
            .initial_backoff
            .saturating_mul(1 << attempt.min(10))
            .min(self.policy.max_backoff);
        // Full jitter.
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Sends one attempt; the admission counts it in flight until it is dropped.
    async fn send(
        &self,
        admission: &Admission,
        req: Request<Body>,
    ) -> Result<Response<Body>, BoxError> {
        let mut channel = admission.replica.channel.clone();
        channel.ready().await?;
        Ok(channel.call(req).await?)
    }

    async fn call(self: Arc<Self>, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        // Any served path, health and reflection included. A path this client does not know
        // is sent as one message (as before), but its answer is never read ahead: it may be
        // a stream.
        let call_type = api::served_method(req.uri().path()).map(|m| m.call_type);
        let single_message =
            call_type.is_none_or(|t| matches!(t, CallType::Unary | CallType::ServerStream));
        let idempotent = is_idempotent(&req);
        // How far an answer is read within its attempt: a unary one whole (the caller waits
        // for all of it anyway); a server stream to its first message only when it may be
        // sent again (otherwise the caller gets the stream at its head: an event stream's
        // first message may be far off); a path not known is the caller's to read.
        let read_ahead = match call_type {
            Some(CallType::Unary) => Some(ReadAhead::Whole),
            Some(CallType::ServerStream) if idempotent => Some(ReadAhead::FirstMessage),
            _ => None,
        };
        if !single_message {
            // Streams are balanced and guarded, never replayed.
            let Some(mut admission) = self.pick(None) else {
                return Ok(unavailable("no replica available: every circuit is open"));
            };
            let timeout = api::grpc_timeout(req.headers());
            let result = self.send(&admission, req).await;
            let ok = matches!(&result, Ok(r) if status_of(r.headers()) != Some(Code::Unavailable));
            self.record(&mut admission, ok);
            return match result {
                Err(err) if timed_out(err.as_ref()) => {
                    Ok(deadline_exceeded(timeout, &admission.replica.endpoint))
                }
                result => result,
            };
        }
        let (mut parts, body) = req.into_parts();
        let bytes: Bytes = body.collect().await?.to_bytes();
        // Retries spend the call's own deadline, never extend it.
        let timeout = api::grpc_timeout(&parts.headers);
        let deadline = timeout.map(|t| Instant::now() + t);
        let attempts = self.policy.max_attempts.clamp(1, 5);
        let mut attempt = 0;
        let mut failed: Option<Arc<Replica>> = None;
        loop {
            let Some(mut admission) = self.pick(failed.as_ref()) else {
                return Ok(unavailable(
                    "no replica available: every circuit is open; failing fast",
                ));
            };
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(tonic::Status::deadline_exceeded(
                        "the deadline passed while retrying",
                    )
                    .into_http());
                }
                if let Ok(v) = format!("{}m", left.as_millis().max(1)).parse() {
                    parts.headers.insert(api::GRPC_TIMEOUT, v);
                }
            }
            let req = Request::from_parts(
                parts.clone(),
                Body::new(http_body_util::Full::new(bytes.clone())),
            );
            attempt += 1;
            let last = attempt >= attempts;
            let replica = admission.replica.clone();
            let endpoint = &replica.endpoint;
            let result = self.send(&admission, req).await;
            match result {
                Err(err) => {
                    self.record(&mut admission, false);
                    if timed_out(err.as_ref()) {
                        // Each attempt carries what is left of the deadline: it is spent.
                        return Ok(deadline_exceeded(timeout, endpoint));
                    }
                    if !self.may_retry(last, idempotent || never_sent(err.as_ref())) {
                        return Err(err);
                    }
                    self.count_retry(Retry::Transport);
                    tracing::debug!(%endpoint, error = %err, attempt, "retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Ok(response) if status_of(response.headers()) == Some(Code::Unavailable) => {
                    self.record(&mut admission, false);
                    let wait = match pushback(&response) {
                        Some(None) => return Ok(response),
                        Some(Some(d)) => d,
                        None => self.backoff(attempt),
                    };
                    if !self.may_retry(last, idempotent) {
                        return Ok(response);
                    }
                    self.count_retry(Retry::Unavailable);
                    tokio::time::sleep(wait).await;
                }
                Ok(response) => {
                    let Some(until) = read_ahead else {
                        self.record(&mut admission, true);
                        return Ok(response);
                    };
                    let read = read_answer(response, until);
                    let read = match deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, read).await.ok(),
                        None => Some(read.await),
                    };
                    match read {
                        None => {
                            self.record(&mut admission, false);
                            return Ok(deadline_exceeded(timeout, endpoint));
                        }
                        Some(Ok(response)) => {
                            self.record(&mut admission, true);
                            return Ok(response);
                        }
                        Some(Err(cause)) => {
                            // The request arrived (its answer began): only an idempotent
                            // call may be sent again.
                            self.record(&mut admission, false);
                            if !self.may_retry(last, idempotent) {
                                return Ok(answer_lost(endpoint, &cause, idempotent, attempt));
                            }
                            self.count_retry(Retry::Transport);
                            tracing::debug!(%endpoint, error = %cause, attempt, "answer cut; retrying");
                            tokio::time::sleep(self.backoff(attempt)).await;
                        }
                    }
                }
            }
            // Only a failed attempt that will be retried gets here: the next goes elsewhere.
            failed = Some(replica);
        }
    }

    /// Whether a failed attempt is sent again: not the last, `safe` to repeat, and within
    /// the retry budget.
    fn may_retry(&self, last: bool, safe: bool) -> bool {
        !last && safe && self.budget.lock().allows_retry()
    }
}

impl Service<Request<Body>> for Resilient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.shared.clone().call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers: calls to it wait.
    async fn blackhole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (addr, task)
    }

    type H2Connection = h2::server::Connection<tokio::net::TcpStream, Bytes>;

    /// A plain-HTTP/2 server on a loopback port: `serve` runs each connection it accepts,
    /// told its number (the first is 1) and given a counter of calls, returned with the
    /// address for the test to read.
    async fn h2_server<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(usize, H2Connection, Arc<AtomicUsize>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = Arc::new(serve);
        let calls = Arc::new(AtomicUsize::new(0));
        let taken = calls.clone();
        tokio::spawn(async move {
            let mut connections = 0;
            while let Ok((socket, _)) = listener.accept().await {
                connections += 1;
                let (serve, taken) = (serve.clone(), taken.clone());
                tokio::spawn(async move {
                    let conn = h2::server::handshake(socket).await.unwrap();
                    serve(connections, conn, taken).await;
                });
            }
        });
        (addr, calls)
    }

    /// The head of a gRPC answer.
    fn grpc_head() -> http::response::Builder {
        http::Response::builder().header("content-type", "application/grpc")
    }

    /// Sends `message` and the trailers of a successful call.
    fn answer_ok(mut send: h2::SendStream<Bytes>, message: &'static [u8]) {
        send.send_data(Bytes::from_static(message), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        send.send_trailers(trailers).unwrap();
    }

    /// A plain-HTTP/2 server whose first `cut` connections send the head of their first
    /// answer and then break (the head is known to have arrived: the client has answered a
    /// PING sent after it); later connections answer in full. Counts the calls it took.
    async fn cutting_server(cut: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        h2_server(move |connection, mut conn, taken| {
            async move {
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    taken.fetch_add(1, Ordering::SeqCst);
                    let send = respond
                        .send_response(grpc_head().body(()).unwrap(), false)
                        .unwrap();
                    if connection <= cut {
                        let mut ping = conn.ping_pong().unwrap();
                        tokio::select! {
                            pong = ping.ping(h2::Ping::opaque()) => {
                                pong.unwrap();
                            }
                            _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => {
                                panic!("the client left before the head arrived")
                            }
                        }
                        return; // the connection breaks mid-answer
                    }
                    answer_ok(send, ANSWER);
                }
            }
        })
        .await
    }

    /// A gRPC message: a 3-byte payload behind its 5-byte prefix.
    const ANSWER: &[u8] = b"\0\0\0\0\x03abc";

    fn client_of(addr: std::net::SocketAddr) -> Resilient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let policy = Resilience {
            initial_backoff: Duration::from_millis(1),
            ..Resilience::default()
        };
        Resilient::new(vec![(format!("http://{addr}"), channel)], policy, None)
    }

    fn request(addr: std::net::SocketAddr, method: &str) -> Request<Body> {
        Request::builder()
            .uri(format!("http://{addr}/jisucloud.v1.{method}"))
            .header("content-type", "application/grpc")
            .body(Body::new(http_body_util::Full::new(Bytes::from_static(
                b"\0\0\0\0\0",
            ))))
            .unwrap()
    }

    /// GetUser cut before its answer's end, ListUsers before its first message, and a
    /// CreateOrder that carries an idempotency key (the server answers a repeat with the
    /// first order).
    #[tokio::test]
    async fn an_idempotent_call_whose_answer_is_cut_after_its_head_is_sent_again() {
        for (method, key) in [
            ("UserService/GetUser", None),
            ("UserService/ListUsers", None),
            ("OrderService/CreateOrder", Some("order-7")),
        ] {
            let (addr, calls) = cutting_server(1).await;
            let mut client = client_of(addr);
            let mut req = request(addr, method);
            if let Some(key) = key {
                req.headers_mut()
                    .insert(api::IDEMPOTENCY_KEY, http::HeaderValue::from_static(key));
            }
            let response = client.call(req).await.unwrap();
            let answer = response.into_body().collect().await.unwrap();
            let trailers = answer.trailers().cloned().expect("trailers handed on");
            assert_eq!(trailers["grpc-status"], "0", "{method}");
            assert_eq!(answer.to_bytes(), ANSWER, "{method}");
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{method}: sent once more");
            assert_eq!(client.replicas()[0].served(), 1, "{method}");
        }
    }

    /// A plain-HTTP/2 replica that reports SERVING to health checks and answers every other
    /// call UNAVAILABLE (trailers-only) when `sick`, or [`ANSWER`] when not. Counts the
    /// calls other than health checks.
    async fn replica_server(sick: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        h2_server(move |_, mut conn, taken| {
            async move {
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let health = request.uri().path().ends_with("/Check");
                    if !health {
                        taken.fetch_add(1, Ordering::SeqCst);
                    }
                    if sick && !health {
                        let head = grpc_head().header("grpc-status", "14").body(()).unwrap();
                        respond.send_response(head, true).unwrap();
                        continue;
                    }
                    let send = respond
                        .send_response(grpc_head().body(()).unwrap(), false)
                        .unwrap();
                    // HealthCheckResponse { status: SERVING }, or the test's answer.
                    answer_ok(
                        send,
                        if health {
                            b"\0\0\0\0\x02\x08\x01"
                        } else {
                            ANSWER
                        },
                    );
                }
            }
        })
        .await
    }

    /// Two replicas, one answering UNAVAILABLE, both healthy to health checks, no circuit
    /// opening and a budget that never runs out: with two attempts per call, every call
    /// succeeds only if a retry never goes back to the replica that just failed.
    #[tokio::test]
    async fn a_retry_goes_to_another_replica_than_the_one_that_failed() {
        let (sick, sick_calls) = replica_server(true).await;
        let (healthy, healthy_calls) = replica_server(false).await;
        let channel = |addr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy()
        };
        let policy = Resilience {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            breaker_failures: u32::MAX,
            budget_tokens: 1e9,
            ..Resilience::default()
        };
        let mut client = Resilient::new(
            vec![
                ("sick".into(), channel(sick)),
                ("healthy".into(), channel(healthy)),
            ],
            policy,
            None,
        );
        for n in 0..40 {
            let response = client
                .call(request(healthy, "UserService/GetUser"))
                .await
                .unwrap();
            assert_eq!(
                status_of(response.headers()),
                None,
                "call {n}: not trailers-only"
            );
            let answer = response.into_body().collect().await.unwrap();
            assert_eq!(answer.trailers().unwrap()["grpc-status"], "0", "call {n}");
        }
        let (sick_calls, healthy_calls) = (
            sick_calls.load(Ordering::SeqCst),
            healthy_calls.load(Ordering::SeqCst),
        );
        assert_eq!(healthy_calls, 40);
        assert!(sick_calls > 0, "both replicas were picked");
    }

    /// A server whose streams answer with a head and then nothing, the connection kept.
    async fn silent_server() -> std::net::SocketAddr {
        let (addr, _) = h2_server(|_, mut conn, _| async move {
            let mut held = Vec::new();
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                let head = grpc_head().body(()).unwrap();
                held.push(respond.send_response(head, false).unwrap());
            }
        })
        .await;
        addr
    }

    #[tokio::test]
    async fn an_event_stream_is_handed_on_at_its_head_before_any_message() {
        let addr = silent_server().await;
        let mut client = client_of(addr);
        // Not idempotent, so never sent again: nothing to read ahead for. (Bounded only so a
        // regression fails instead of hanging.)
        let call = client.call(request(addr, "OrderService/StreamOrderUpdates"));
        let response = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the stream is handed on at its head")
            .unwrap();
        assert_eq!(response.headers()["content-type"], "application/grpc");
    }

    #[tokio::test]
    async fn a_non_idempotent_call_whose_answer_is_cut_is_not_sent_again_and_says_so() {
        let (addr, calls) = cutting_server(1).await;
        let mut client = client_of(addr);
        let response = client
            .call(request(addr, "UserService/CreateUser"))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("trailers-only");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let message = status.message();
        assert!(
            message.starts_with(&format!(
                "the connection to http://{addr} broke while its answer was being read ("
            )) && message.ends_with(
                "not retried: the method is not idempotent and the call may have been applied"
            ),
            "{message}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "sent once");
    }

    #[tokio::test]
    async fn a_dropped_call_leaves_nothing_in_flight_and_releases_its_probe() {
        let (addr, _server) = blackhole().await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = Resilient::new(
            vec![("blackhole".into(), channel)],
            Resilience::default(),
            None,
        );
        let replica = client.replicas()[0].clone();
        // A circuit whose cooldown is over: the next call is its one probe.
        *replica.circuit.lock() = Circuit::Open {
            until: Instant::now(),
            cooldown: Duration::from_secs(1),
        };
        for path in [
            "/jisucloud.v1.UserService/CreateUser",
            "/jisucloud.v1.OrderService/TrackOrders",
        ] {
            let request = Request::builder()
                .uri(format!("http://{addr}{path}"))
                .body(Body::empty())
                .unwrap();
            let mut call = tower::Service::call(&mut client.clone(), request);
            assert!(futures::poll!(&mut call).is_pending(), "{path}");
            assert_eq!(replica.in_flight.load(Ordering::Relaxed), 1, "{path}");
            assert_eq!(
                *replica.circuit.lock(),
                Circuit::HalfOpen { probing: true },
                "{path}"
            );
            // The caller gives up (a deadline, a cancelled request).
            drop(call);
            assert_eq!(replica.in_flight.load(Ordering::Relaxed), 0, "{path}");
            assert_eq!(
                *replica.circuit.lock(),
                Circuit::HalfOpen { probing: false },
                "{path}: another call may probe"
            );
            assert!(replica.usable(Instant::now()));
        }
    }
}
