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
//!   that provably never reached a server (typed facts only, see `never_sent`) — with
//!   exponential backoff and full jitter,
//!   at most 5 attempts, `grpc-retry-pushback-ms` honoured, and a retry budget (gRPC A6
//!   token bucket) so retries cannot multiply an outage.
//!
//! Single-message requests are buffered (they are small) so they can be sent again;
//! client and bidi streams are balanced and guarded but never retried.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool },
}

/// One server the client can send to.
#[derive(Debug)]
pub struct Replica {
    pub endpoint: String,
    channel: Channel,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    circuit: Mutex<Circuit>,
    served: AtomicUsize,
}

impl Replica {
    /// Calls answered by this replica (for tests and reports).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// What the last health check said (SERVING) or the transport let through.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_open(&self) -> bool {
        matches!(*self.circuit.lock(), Circuit::Open { .. })
    }

    fn usable(&self, now: Instant) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        match *self.circuit.lock() {
            Circuit::Closed { .. } => true,
            Circuit::Open { until, .. } => now >= until,
            Circuit::HalfOpen { probing } => !probing,
        }
    }

    /// Takes the replica for one call: `None` if its circuit says no, `Some(true)` when
    /// this call is the half-open circuit's one probe.
    fn admit(&self, now: Instant) -> Option<bool> {
        let mut c = self.circuit.lock();
        match *c {
            Circuit::Closed { .. } => Some(false),
            Circuit::Open { until, .. } if now >= until => {
                tracing::info!(endpoint = %self.endpoint, "circuit half-open: probing");
                *c = Circuit::HalfOpen { probing: true };
                Some(true)
            }
            Circuit::Open { .. } => None,
            Circuit::HalfOpen { probing: false } => {
                *c = Circuit::HalfOpen { probing: true };
                Some(true)
            }
            Circuit::HalfOpen { probing: true } => None,
        }
    }
}

/// One call's hold on a replica: counts it in flight and, for a half-open circuit's
/// probe, owns the probe. Dropped without an outcome (the caller gave up on the call),
/// it undoes both, so the balancer does not avoid the replica forever and the breaker
/// does not wait forever for a probe that will never report.
struct Admission {
    replica: Arc<Replica>,
    probe: bool,
}

impl Admission {
    fn new(replica: Arc<Replica>, probe: bool) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        Self { replica, probe }
    }

    /// The outcome was recorded: the probe is settled.
    fn settled(&mut self) {
        self.probe = false;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe {
            let mut c = self.replica.circuit.lock();
            if *c == (Circuit::HalfOpen { probing: true }) {
                // Another call may probe.
                *c = Circuit::HalfOpen { probing: false };
            }
        }
    }
}

/// The A6 retry throttle: retries stop while more than half the tokens are spent.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    max: f64,
    ratio: f64,
}

impl Budget {
    fn failure(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
    fn success(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(self.max);
    }
    fn allows_retry(&self) -> bool {
        self.tokens > self.max / 2.0
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

fn grpc_status(response: &Response<Body>) -> Option<Code> {
    response
        .headers()
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// `grpc-retry-pushback-ms`: `Some(Some(d))` wait `d`; `Some(None)` do not retry.
fn pushback(response: &Response<Body>) -> Option<Option<Duration>> {
    let raw = response.headers().get(api::RETRY_PUSHBACK_MS)?;
    Some(
        raw.to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis),
    )
}

fn is_idempotent(req: &Request<Body>) -> bool {
    let path = req.uri().path();
    if req.headers().contains_key(api::IDEMPOTENCY_KEY) {
        return true;
    }
    if let Some(m) = api::served_method(path) {
        return m.idempotent;
    }
    api::method(path).is_some_and(|m| m.idempotent)
}

/// The request provably never reached a server's application, decided from typed facts
/// in the error's source chain, never from its text:
/// - the connection could not be established (tonic's [`tonic::ConnectError`]: DNS, TCP
///   connect, TLS handshake);
/// - the server refused the stream (RST_STREAM with REFUSED_STREAM, RFC 9113 §8.7);
/// - the server's GOAWAY named a last stream id below ours, or arrived before our stream
///   was opened (h2 reports exactly these streams with the remote GOAWAY error; streams
///   the server had taken end with another error when the connection closes).
///
/// Anything else (a reset or closed connection after the request left) may have been
/// applied, so a non-idempotent call is not sent again.
pub(crate) fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        cause = e.source();
    }
    false
}

fn unavailable(message: &str) -> Response<Body> {
    tonic::Status::unavailable(message.to_owned()).into_http()
}

impl Shared {
    fn pick(&self) -> Option<Admission> {
        let now = Instant::now();
        let usable: Vec<&Arc<Replica>> = self.replicas.iter().filter(|r| r.usable(now)).collect();
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
        let single_message = api::method(req.uri().path())
            .is_none_or(|m| matches!(m.call_type, CallType::Unary | CallType::ServerStream));
        let idempotent = is_idempotent(&req);
        if !single_message {
            // Streams are balanced and guarded, never replayed.
            let Some(mut admission) = self.pick() else {
                return Ok(unavailable("no replica available: every circuit is open"));
            };
            let result = self.send(&admission, req).await;
            let ok = matches!(&result, Ok(r) if grpc_status(r) != Some(Code::Unavailable));
            self.record(&mut admission, ok);
            return result;
        }
        let (mut parts, body) = req.into_parts();
        let bytes: Bytes = body.collect().await?.to_bytes();
        // Retries spend the call's own deadline, never extend it.
        let deadline = parts
            .headers
            .get(api::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(api::parse_timeout)
            .map(|t| Instant::now() + t);
        let attempts = self.policy.max_attempts.clamp(1, 5);
        let mut attempt = 0;
        loop {
            let Some(mut admission) = self.pick() else {
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
            let endpoint = admission.replica.endpoint.clone();
            let result = self.send(&admission, req).await;
            match result {
                Err(err) => {
                    self.record(&mut admission, false);
                    let safe = idempotent || never_sent(err.as_ref());
                    if last || !safe || !self.budget.lock().allows_retry() {
                        return Err(err);
                    }
                    self.count_retry(Retry::Transport);
                    tracing::debug!(%endpoint, error = %err, attempt, "retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Ok(response) if grpc_status(&response) == Some(Code::Unavailable) => {
                    self.record(&mut admission, false);
                    let wait = match pushback(&response) {
                        Some(None) => return Ok(response),
                        Some(Some(d)) => d,
                        None => self.backoff(attempt),
                    };
                    if last || !idempotent || !self.budget.lock().allows_retry() {
                        return Ok(response);
                    }
                    self.count_retry(Retry::Unavailable);
                    tokio::time::sleep(wait).await;
                }
                Ok(response) => {
                    self.record(&mut admission, true);
                    return Ok(response);
                }
            }
        }
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

    #[test]
    fn the_budget_stops_retries_after_a_run_of_failures() {
        let mut b = Budget {
            tokens: 10.0,
            max: 10.0,
            ratio: 0.1,
        };
        assert!(b.allows_retry());
        for _ in 0..5 {
            b.failure();
        }
        assert!(!b.allows_retry(), "half spent: no more retries");
        for _ in 0..10 {
            b.success();
        }
        assert!(b.allows_retry(), "successes earn retries back");
    }

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

    #[test]
    fn only_typed_facts_say_a_request_was_never_sent() {
        let io = |text: &str| std::io::Error::new(std::io::ErrorKind::ConnectionReset, text);
        let connect: BoxError = Box::new(tonic::ConnectError(Box::new(io("connect refused"))));
        assert!(never_sent(connect.as_ref()));
        // Text that merely sounds like a connection problem proves nothing.
        for text in [
            "connection closed before message completed",
            "connection reset",
            "connection refused",
            "dns error",
        ] {
            let err: BoxError = Box::new(io(text));
            assert!(!never_sent(err.as_ref()), "{text}");
        }
        // A stream error h2 made itself (not the server's refusal) proves nothing either.
        let local: BoxError = Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert!(!never_sent(local.as_ref()));
    }
}
