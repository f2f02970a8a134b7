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
//!   whose connection could not even be made — with exponential backoff and full jitter,
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

use crate::{
    security::policy::{self, CallType},
    telemetry::metrics::Metrics,
};

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

    /// Takes the replica for one call; false if its circuit says no.
    fn admit(&self, now: Instant) -> bool {
        let mut c = self.circuit.lock();
        match *c {
            Circuit::Closed { .. } => true,
            Circuit::Open { until, .. } if now >= until => {
                tracing::info!(endpoint = %self.endpoint, "circuit half-open: probing");
                *c = Circuit::HalfOpen { probing: true };
                true
            }
            Circuit::Open { .. } => false,
            Circuit::HalfOpen { probing: false } => {
                *c = Circuit::HalfOpen { probing: true };
                true
            }
            Circuit::HalfOpen { probing: true } => false,
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
    metrics: Option<Metrics>,
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
        metrics: Option<Metrics>,
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
    let raw = response.headers().get("grpc-retry-pushback-ms")?;
    Some(
        raw.to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis),
    )
}

fn is_idempotent(req: &Request<Body>) -> bool {
    let path = req.uri().path();
    if path.starts_with("/grpc.health.v1.Health/") || req.headers().contains_key("idempotency-key")
    {
        return true;
    }
    policy::method(path).is_some_and(|m| m.idempotent)
}

/// A connection that could not be made: the request never left.
fn never_sent(err: &BoxError) -> bool {
    let chain = crate::client::error_chain(err.as_ref()).to_ascii_lowercase();
    chain.contains("connect") || chain.contains("refused") || chain.contains("dns")
}

fn unavailable(message: &str) -> Response<Body> {
    tonic::Status::unavailable(message.to_owned()).into_http()
}

impl Shared {
    fn pick(&self) -> Option<Arc<Replica>> {
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
        choice.admit(now).then(|| choice.clone())
    }

    fn record(&self, replica: &Replica, ok: bool) {
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
            m.gauge(
                "jisu_client_circuit_open",
                &[("endpoint", replica.endpoint.clone())],
            )
            .set(open);
        }
    }

    fn count_retry(&self, reason: &'static str) {
        if let Some(m) = &self.metrics {
            m.counter("jisu_client_retries_total", &[("reason", reason)])
                .increment(1);
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

    async fn send(
        &self,
        replica: &Replica,
        req: Request<Body>,
    ) -> Result<Response<Body>, BoxError> {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let mut channel = replica.channel.clone();
            channel.ready().await?;
            channel.call(req).await
        }
        .await
        .map_err(BoxError::from);
        replica.in_flight.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn call(self: Arc<Self>, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let single_message = policy::method(req.uri().path())
            .is_none_or(|m| matches!(m.call_type, CallType::Unary | CallType::ServerStream));
        let idempotent = is_idempotent(&req);
        if !single_message {
            // Streams are balanced and guarded, never replayed.
            let Some(replica) = self.pick() else {
                return Ok(unavailable("no replica available: every circuit is open"));
            };
            let result = self.send(&replica, req).await;
            let ok = matches!(&result, Ok(r) if grpc_status(r) != Some(Code::Unavailable));
            self.record(&replica, ok);
            return result;
        }
        let (mut parts, body) = req.into_parts();
        let bytes: Bytes = body.collect().await?.to_bytes();
        // Retries spend the call's own deadline, never extend it.
        let deadline = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::service::streams::parse_timeout)
            .map(|t| Instant::now() + t);
        let attempts = self.policy.max_attempts.clamp(1, 5);
        let mut attempt = 0;
        loop {
            let Some(replica) = self.pick() else {
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
                    parts.headers.insert("grpc-timeout", v);
                }
            }
            let req = Request::from_parts(
                parts.clone(),
                Body::new(http_body_util::Full::new(bytes.clone())),
            );
            attempt += 1;
            let last = attempt >= attempts;
            match self.send(&replica, req).await {
                Err(err) => {
                    self.record(&replica, false);
                    let safe = idempotent || never_sent(&err);
                    if last || !safe || !self.budget.lock().allows_retry() {
                        return Err(err);
                    }
                    self.count_retry("transport");
                    tracing::debug!(endpoint = %replica.endpoint, error = %err, attempt, "retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Ok(response) if grpc_status(&response) == Some(Code::Unavailable) => {
                    self.record(&replica, false);
                    let wait = match pushback(&response) {
                        Some(None) => return Ok(response),
                        Some(Some(d)) => d,
                        None => self.backoff(attempt),
                    };
                    if last || !idempotent || !self.budget.lock().allows_retry() {
                        return Ok(response);
                    }
                    self.count_retry("unavailable");
                    tokio::time::sleep(wait).await;
                }
                Ok(response) => {
                    self.record(&replica, true);
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
}
